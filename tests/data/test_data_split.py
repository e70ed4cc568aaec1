"""`python -m casting.data split`: deterministic, stratified, complete, loadable, safe."""

import json
import os
import random

import pytest

from casting.data import load_dataset
from casting.data.__main__ import main as data_cli
from casting.data.split import allocate, choose_split, num_test_images, stratum_label
from casting.data.split_write import SplitError, split_dataset

from datakit import write_image

CLASSES = ("disk", "holes", "chipping")


def _rect(title, x1, y1, x2, y2):
    return {"classTitle": title, "geometryType": "rectangle", "tags": [],
            "points": {"exterior": [[x1, y1], [x2, y2]], "interior": []}}


def _tagged_project(root, n_bad=15, n_good=5, datasets=("ds_a", "ds_b")):
    """A Supervisely project without meta.json: images tagged `bad` (a disk and a hole)
    or `good` (a disk only), spread over two datasets; 16x16 PNGs."""
    kinds = ["bad"] * n_bad + ["good"] * n_good
    for i, kind in enumerate(kinds):
        ds = datasets[i % len(datasets)]
        name = f"img_{i:03d}.png"
        write_image(str(root / ds / "img" / name), 16, 16)
        objects = [_rect("disk", 1, 1, 14, 14)]
        if kind == "bad":
            objects += [_rect("holes", 3, 3, 5, 5), _rect("chipping", 10, 10, 12, 11)]
        ann = {"description": "", "tags": [{"name": kind, "value": None}],
               "size": {"height": 16, "width": 16}, "objects": objects}
        os.makedirs(root / ds / "ann", exist_ok=True)
        (root / ds / "ann" / f"{name}.json").write_text(json.dumps(ann))
    return root


@pytest.fixture
def tagged(tmp_path):
    return _tagged_project(tmp_path / "src")


def _names(out, side):
    return json.loads((out / "split.json").read_text())[side]["images"]


# ---- the choice ----------------------------------------------------------------------------
def test_choice_depends_only_on_names_and_seed():
    names = [f"im{i:02d}.jpg" for i in range(40)]
    shuffled = names[:]
    random.Random(7).shuffle(shuffled)
    a = choose_split({n: "all" for n in names}, 0.25, seed=0)
    b = choose_split({n: "all" for n in shuffled}, 0.25, seed=0)  # another listing order
    assert a == b and len(a.test) == 10 and len(a.train) == 30
    assert choose_split({n: "all" for n in names}, 0.25, seed=1).test != a.test
    # an image added to the dataset does not reshuffle the others
    c = choose_split({n: "all" for n in names + ["zz.jpg"]}, 0.25, seed=0)
    assert len(set(c.test) & set(a.test)) >= 9


def test_allocation_and_counts():
    assert num_test_images(188, 0.2) == 38
    assert num_test_images(10, 0.01) == 1 and num_test_images(3, 0.99) == 2
    assert allocate({"bad": 15, "good": 5}, 4) == {"bad": 3, "good": 1}
    shares = allocate({"bad": 72, "bad+reviewd": 56, "good": 37, "good+reviewd": 22,
                       "untagged": 1}, 38)
    assert sum(shares.values()) == 38 and shares["bad"] + shares["bad+reviewd"] == 26
    assert stratum_label(["reviewd", "good"]) == "good+reviewd" and stratum_label([]) == \
        "untagged"
    with pytest.raises(ValueError, match="between 0 and 1"):
        choose_split({"a": "all", "b": "all"}, 1.0, 0)
    with pytest.raises(ValueError, match="at least 2 images"):
        choose_split({"a": "all"}, 0.5, 0)


# ---- the folders ---------------------------------------------------------------------------
def test_split_is_deterministic_stratified_complete_and_loadable(tagged, tmp_path, capsys):
    out = tmp_path / "split"
    assert data_cli(["split", str(tagged), "--out", str(out), "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "train: 16 images (bad 12, good 4); objects" in printed
    assert "test: 4 images (bad 3, good 1); objects" in printed

    summary = json.loads((out / "split.json").read_text())
    assert summary["seed"] == 0 and summary["test_fraction"] == 0.2
    assert summary["stratified_by_tags"] == ["bad", "good"]
    train, test = set(summary["train"]["images"]), set(summary["test"]["images"])
    assert not train & test  # no image on both sides
    assert train | test == {f"img_{i:03d}.png" for i in range(20)}  # every image somewhere
    assert summary["test"]["strata"] == {"bad": 3, "good": 1}
    assert summary["test"]["objects"] == {"chipping": 3, "disk": 4, "holes": 3}
    assert summary["train"]["objects"] == {"chipping": 12, "disk": 16, "holes": 12}

    # flat folders: meta.json, img/<name> and ann/<name>.json, links to the source
    for side, names in (("train", train), ("test", test)):
        folder = out / side
        assert sorted(os.listdir(folder / "img")) == sorted(names)
        assert sorted(os.listdir(folder / "ann")) == sorted(f"{n}.json" for n in names)
        assert (folder / "meta.json").is_file()
        link = folder / "img" / sorted(names)[0]
        assert link.is_symlink() and os.path.realpath(link).startswith(str(tagged))
        ds = load_dataset(folder)  # the project's loader, no problems
        assert len(ds) == len(names)
        assert ds.class_counts() == summary[side]["objects"]
    source = load_dataset(tagged)
    assert ds.class_names == source.class_names  # meta.json keeps the loader's class order
    total = {c: summary["train"]["objects"][c] + summary["test"]["objects"][c]
             for c in source.class_names}
    assert total == source.class_counts()  # same number of instances in all

    # same seed -> same split; another seed -> another one
    split_dataset(str(tagged), str(tmp_path / "again"), seed=0)
    assert _names(tmp_path / "again", "test") == summary["test"]["images"]
    other = split_dataset(str(tagged), str(tmp_path / "other"), seed=1)
    assert other["test"]["images"] != summary["test"]["images"]
    assert other["test"]["strata"] == {"bad": 3, "good": 1}  # still stratified


def test_nested_source_with_meta_copy_mode_and_coco(sly_project, coco_dir, tmp_path):
    out = tmp_path / "split"
    summary = split_dataset(str(sly_project), str(out), test_fraction=0.5, seed=0, copy=True)
    names = summary["train"]["images"] + summary["test"]["images"]
    assert sorted(names) == ["a.png", "b.jpg"]
    ann = out / ("train" if "b.jpg" in summary["train"]["images"] else "test") / "ann"
    assert (ann / "b.jpg.json").is_file() and not (ann / "b.jpg.json").is_symlink()
    source = load_dataset(sly_project)
    loaded = [load_dataset(out / side) for side in ("train", "test")]
    assert all(ds.class_names == source.class_names for ds in loaded)  # source meta.json
    assert sum(sum(ds.class_counts().values()) for ds in loaded) == \
        sum(source.class_counts().values())

    coco_out = tmp_path / "coco-split"
    summary = split_dataset(str(coco_dir), str(coco_out), test_fraction=0.5, seed=0)
    assert summary["format"] == "coco" and summary["stratified_by_tags"] == []
    coco = load_dataset(coco_dir)
    loaded = [load_dataset(coco_out / side) for side in ("train", "test")]
    assert sum(len(ds) for ds in loaded) == len(coco)
    counts = [ds.class_counts() for ds in loaded]
    assert {c: sum(x.get(c, 0) for x in counts) for c in coco.class_names} == \
        coco.class_counts()


def test_existing_output_is_refused_unless_same_split_or_force(tagged, tmp_path, capsys):
    out = tmp_path / "split"
    first = split_dataset(str(tagged), str(out), seed=0)
    split_dataset(str(tagged), str(out), seed=0)  # a rerun of the same split is fine
    with pytest.raises(SplitError, match=r"train: already holds other content.*--force"):
        split_dataset(str(tagged), str(out), seed=5)
    assert _names(out, "test") == first["test"]["images"]  # nothing was touched
    assert data_cli(["split", str(tagged), "--out", str(out), "--seed", "5"]) == 1
    assert "already holds other content" in capsys.readouterr().err
    forced = split_dataset(str(tagged), str(out), seed=5, force=True)
    assert _names(out, "test") == forced["test"]["images"] != first["test"]["images"]
    assert sorted(os.listdir(out / "test" / "img")) == forced["test"]["images"]
    assert not [f for f in os.listdir(out) if f.startswith(".split-tmp")]

    (tmp_path / "other" / "test").mkdir(parents=True)
    (tmp_path / "other" / "test" / "notes.txt").write_text("mine")
    with pytest.raises(SplitError, match="test: already holds other content"):
        split_dataset(str(tagged), str(tmp_path / "other"))
    with pytest.raises(SplitError, match="inside the source"):
        split_dataset(str(tagged), str(tagged / "splits"))
    with pytest.raises(SplitError, match=r"tag\(s\) \['pretty'\]"):
        split_dataset(str(tagged), str(tmp_path / "x"), stratify_tags=["pretty"])
    with pytest.raises(SplitError, match="between 0 and 1"):
        split_dataset(str(tagged), str(tmp_path / "x"), test_fraction=0)
    assert not (tmp_path / "x").exists()


def test_a_source_with_problems_is_refused(tagged, tmp_path, capsys):
    (tagged / "ds_a" / "ann" / "img_000.png.json").write_text("{not json")
    assert data_cli(["split", str(tagged), "--out", str(tmp_path / "split")]) == 1
    err = capsys.readouterr().err
    assert "cannot split a dataset with problems" in err and "img_000.png.json" in err
    assert not (tmp_path / "split").exists()
