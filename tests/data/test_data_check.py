"""Every problem `check` reports, fed by a broken fixture; raise vs skip; the CLI."""

import json
import logging

import pytest

from casting.data import DatasetError, load_dataset, read_dataset
from casting.data.__main__ import main as cli
from datakit import write_image


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _kinds(report):
    return [(p.kind, p.file.rsplit("/", 1)[-1]) for p in report.problems]


def test_unreadable_image(sly_project, caplog):
    (sly_project / "ds1/img/a.png").write_bytes(b"this is not a png")
    _, report = read_dataset(sly_project)
    assert _kinds(report) == [("unreadable image", "a.png")]
    with pytest.raises(DatasetError) as err:
        load_dataset(sly_project)
    assert "ds1/img/a.png: unreadable image: cannot decode" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="casting.data"):
        ds = load_dataset(sly_project, on_error="skip")
    assert [r.image_id for r in ds.records] == ["ds1/datasets/child/b.jpg"]
    assert "skipping 1 of 2 images and 0 objects" in caplog.text


def test_size_mismatch(sly_project):
    write_image(str(sly_project / "ds1/datasets/child/img/b.jpg"), 9, 8)
    _, report = read_dataset(sly_project)
    assert _kinds(report) == [("size mismatch", "b.jpg")]
    assert "image is 9x8 (HxW) but the annotation says 8x8" in report.text()


def test_mask_outside_image(sly_project, caplog):
    ann = sly_project / "ds1/ann/a.png.json"
    _edit_json(ann, lambda d: d["objects"][2]["bitmap"].update(origin=[18, 13]))
    _, report = read_dataset(sly_project)
    assert _kinds(report) == [("mask outside the image", "a.png.json")]
    assert "object 2 ('deburring', bitmap): extends beyond the 16x20 image" in report.text()
    with caplog.at_level(logging.WARNING, logger="casting.data"):
        ds = load_dataset(sly_project, on_error="skip")
    a = [r for r in ds.records if r.image_id == "ds1/a.png"][0]
    assert sorted(i.class_id for i in a.instances) == [1, 2, 3]  # only the bad one dropped
    assert "0 of 2 images and 1 objects" in caplog.text.replace("skipping ", "")


def test_unknown_class_supervisely(sly_project):
    _edit_json(sly_project / "ds1/ann/a.png.json",
               lambda d: d["objects"][1].update(classTitle="scratch"))
    _, report = read_dataset(sly_project)
    assert _kinds(report) == [("unknown class", "a.png.json")]
    assert "'scratch' is not declared in meta.json" in report.text()


def test_missing_annotation(sly_project):
    (sly_project / "ds1/ann/a.png.json").unlink()
    _, report = read_dataset(sly_project)
    assert _kinds(report) == [("missing annotation", "a.png")]


def test_coco_empty_mask_unknown_category_bad_rle(coco_dir):
    def edit(d):
        d["annotations"] += [
            {"id": 5, "image_id": 11, "category_id": 7, "iscrowd": 0,
             "segmentation": {"size": [6, 6], "counts": [36]}},
            {"id": 6, "image_id": 11, "category_id": 99, "iscrowd": 0,
             "segmentation": [[0, 0, 3, 0, 3, 3]]},
            {"id": 7, "image_id": 11, "category_id": 3, "iscrowd": 0,
             "segmentation": {"size": [6, 6], "counts": [3, 4]}},
            {"id": 8, "image_id": 11, "category_id": 3, "iscrowd": 0,
             "segmentation": [[0, 0, 30, 0, 3, 3]]},
        ]
    _edit_json(coco_dir / "annotations.json", edit)
    _, report = read_dataset(coco_dir)
    assert _kinds(report) == [("empty mask", "annotations.json"),
                              ("unknown class", "annotations.json"),
                              ("bad object", "annotations.json"),
                              ("mask outside the image", "annotations.json")]
    text = report.text()
    assert "annotation id 5: mask is empty" in text
    assert "annotation id 6: category_id 99 is not in categories" in text
    assert "annotation id 7: RLE counts sum to 7, expected 6*6=36" in text
    assert "annotation id 8: polygon extends beyond the 6x6 image" in text
    ds = load_dataset(coco_dir, on_error="skip")
    assert len(ds.records) == 2
    assert [r.instances for r in ds.records if r.image_id == "y.png"] == [[]]


def test_check_cli(sly_project, coco_dir, capsys):
    assert cli(["check", str(coco_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 images" in out and "No problems found." in out
    assert "holes" in out and "area min / median / max" in out
    (sly_project / "ds1/img/a.png").write_bytes(b"broken")
    assert cli(["check", str(sly_project)]) == 1
    out = capsys.readouterr().out
    assert "1 problem (unreadable image: 1)" in out and "ds1/img/a.png" in out
    assert "--on-data-error skip" in out and "--skip-bad" in out  # what to do about it


def test_check_real_counts_shape(sly_project, capsys):
    assert cli(["check", str(sly_project), "--class-map", "holes=blowhole"]) == 0
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.strip().startswith("blowhole")][0]
    assert line.split()[1] == "2"  # alpha mask in a.png + bitmap in b.jpg
