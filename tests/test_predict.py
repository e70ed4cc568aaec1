"""python -m casting.predict as a subprocess on a small folder: COCO results + overlays."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

try:  # the shared tiny model and test images live in test_serving
    from test_serving import build_test_model_dir, casting_image
except ImportError:  # tests/ made a package
    from tests.test_serving import build_test_model_dir, casting_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_test_model_dir(tmp_path_factory)


def run_cli(*args, timeout=240):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    return subprocess.run([sys.executable, "-m", "casting.predict", *map(str, args)],
                          cwd=str(ROOT), env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    Image.fromarray(casting_image(96, 128, 0)).save(root / "a.jpg", quality=95)
    Image.fromarray(casting_image(64, 80, 1)).convert("L").save(root / "b.png")
    Image.fromarray(casting_image(70, 70, 2)).save(root / "sub" / "c.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def folder_run(model_dir, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "out"
    r = run_cli("--model", model_dir, "--input", images, "--output", out, "--min-score", "0",
                "--batch-size", "2")
    return r, out


def test_folder_gives_coco_results_overlays_and_errors(folder_run, images):
    r, out = folder_run
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["images"] == 3 and summary["errors"] == 1
    assert "predict" in r.stderr and "img" in r.stderr  # the tqdm progress bar

    meta = json.loads((out / "images.json").read_text())
    names = {im["file_name"]: im for im in meta["images"]}
    assert set(names) == {"a.jpg", "b.png", os.path.join("sub", "c.png")}
    assert (names["a.jpg"]["width"], names["a.jpg"]["height"]) == (128, 96)
    assert meta["categories"] == [{"id": 1, "name": "holes"}, {"id": 2, "name": "chipping"}]
    errors = json.loads((out / "errors.json").read_text())
    assert [e["file_name"] for e in errors] == ["broken.jpg"]

    results = json.loads((out / "results.json").read_text())
    assert len(results) == summary["detections"] > 0
    ids = {im["id"] for im in meta["images"]}
    for det in results:
        assert det["image_id"] in ids and det["category_id"] in (1, 2)
        assert isinstance(det["segmentation"]["counts"], str)
        assert len(det["bbox"]) == 4 and 0.0 <= det["score"] <= 1.0

    # results.json is a valid COCO results file: pycocotools loads and scores it against a
    # ground truth built on images.json
    gt = COCO()
    gt.dataset = {"images": meta["images"], "categories": meta["categories"],
                  "annotations": [{"id": 1, "image_id": names["a.jpg"]["id"], "category_id": 1,
                                   "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0,
                                   "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}]}
    gt.createIndex()
    dt = gt.loadRes(str(out / "results.json"))
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    assert ev.eval["precision"].shape[0] == 10

    # report.csv: one row per image, its verdict by the default policy (this model has no
    # part class, so any detection scoring at least 0.5 rejects the image)
    with open(out / "report.csv", newline="") as fh:
        rows = {row["file_name"]: row for row in csv.DictReader(fh)}
    assert set(rows) == set(names)
    for name, im in names.items():
        strong = [d for d in results if d["image_id"] == im["id"] and d["score"] >= 0.5]
        row = rows[name]
        assert row["verdict"] == ("reject" if strong else "accept"), (name, row)
        for cid, cls in ((1, "holes"), (2, "chipping")):
            assert int(row[f"{cls}_count"]) == sum(d["category_id"] == cid for d in strong)
        assert bool(row["reasons"]) == bool(strong)
        if strong:
            assert int(row["largest_area_px"]) == max(d["area"] for d in strong)
    assert summary["rejected"] == sum(r["verdict"] == "reject" for r in rows.values())

    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["a.png", "b.png", "sub__c.png"]
    a = np.asarray(Image.open(out / "overlays" / "a.png"))
    assert a.shape == (96, 128, 3)
    a_dets = [d for d in results if d["image_id"] == names["a.jpg"]["id"]]
    original = np.asarray(Image.open(images / "a.jpg").convert("RGB"))
    assert not a_dets or not np.array_equal(a, original)


def test_single_file_with_coco_gt_ids_and_filters(model_dir, images, folder_run, tmp_path):
    # the same image as in the folder run, filtered to one class the model found there
    _, folder_out = folder_run
    meta = json.loads((folder_out / "images.json").read_text())
    a_id = next(im["id"] for im in meta["images"] if im["file_name"] == "a.jpg")
    a_dets = [d for d in json.loads((folder_out / "results.json").read_text())
              if d["image_id"] == a_id]
    assert a_dets
    keep = a_dets[0]["category_id"]
    name = ["holes", "chipping"][keep - 1]
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 42, "file_name": "a.jpg", "width": 128,
                                          "height": 96}],
                              "annotations": [], "categories": []}))
    out = tmp_path / "out"
    r = run_cli("--model", model_dir, "--input", images / "a.jpg", "--output", out,
                "--min-score", "0", "--classes", name, "--coco-gt", gt, "--no-overlays",
                "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results and {d["image_id"] for d in results} == {42}
    expected = [dict(d, image_id=42) for d in a_dets if d["category_id"] == keep]
    assert results == expected
    assert not (out / "overlays").exists()
    assert not (out / "errors.json").exists()
    assert r.stderr.count("predict:") == 0
    # a policy on the command line: every detection of the kept class now counts
    out2 = tmp_path / "out2"
    r = run_cli("--model", model_dir, "--input", images / "a.jpg", "--output", out2,
                "--min-score", "0", "--classes", name, "--no-overlays", "--quiet",
                "--policy", json.dumps({"default": {"min_score": 0.0, "max_count": 0}}))
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out2 / "report.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["verdict"] == "reject"
    # the verdict looks at every class, not only the ones --classes keeps for display
    counts = {c: sum(d["category_id"] == i for d in a_dets)
              for i, c in ((1, "holes"), (2, "chipping"))}
    assert {c: int(row[f"{c}_count"]) for c in counts} == counts


def test_bad_input_exits_2(model_dir, tmp_path):
    r = run_cli("--model", model_dir, "--input", tmp_path / "missing", "--output", tmp_path / "o")
    assert r.returncode == 2 and "neither a file nor a folder" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("--model", model_dir, "--input", empty, "--output", tmp_path / "o")
    assert r.returncode == 2 and "no images" in r.stderr
    bad = tmp_path / "policy.json"
    bad.write_text(json.dumps({"classes": {"rust": {}}}))
    (empty / "x.png").write_bytes(_png_bytes())
    r = run_cli("--model", model_dir, "--input", empty, "--output", tmp_path / "o",
                "--policy", bad)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"{bad}: classes.rust: not a class of this model" in r.stderr


def _png_bytes():
    import io

    buf = io.BytesIO()
    Image.fromarray(casting_image(40, 40, 3)).save(buf, format="PNG")
    return buf.getvalue()
