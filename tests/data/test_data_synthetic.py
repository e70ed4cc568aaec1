"""Synthetic castings: deterministic, exact masks, round trips through both formats."""

import json

import numpy as np
import pytest
from PIL import Image

from casting.data import load_dataset
from casting.data.__main__ import main as cli
from casting.data.synthetic import generate_records


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate_records(4, seed=7, size=128, out_dir=str(tmp_path_factory.mktemp("s")))


def test_deterministic_and_plausible(synth, tmp_path):
    again = generate_records(2, seed=7, size=128, out_dir=str(tmp_path))
    for r1, r2 in zip(synth.records[:2], again.records):
        a1 = np.asarray(Image.open(r1.image_path))
        np.testing.assert_array_equal(a1, np.asarray(Image.open(r2.image_path)))
        for i1, i2 in zip(r1.instances, r2.instances, strict=True):
            np.testing.assert_array_equal(i1.mask, i2.mask)
    other = generate_records(1, seed=8, size=128, out_dir=str(tmp_path / "o"))
    assert not np.array_equal(np.asarray(Image.open(other.records[0].image_path)), a1)

    assert synth.class_names == ("disk", "holes", "chipping", "deburring")
    for rec in synth.records:
        img = np.asarray(Image.open(rec.image_path))
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8  # 3-channel grey JPEG
        assert np.abs(img[..., 0].astype(int) - img[..., 2]).max() <= 3
        insts = rec.instances
        assert [i.class_id for i in insts].count(1) == 1  # exactly one disk
        disk = insts[0].mask
        for inst in insts:
            assert inst.mask.shape == (128, 128) and inst.area >= 8
            name = synth.class_names[inst.class_id - 1]
            if name == "chipping":  # chipping is cut out of the disk
                assert not (inst.mask & disk).any()
            if name == "deburring":  # burrs lie outside the disk
                assert not (inst.mask & disk).any()
        grey = img[..., 0].astype(float)
        # the part is brighter than its dark eye and differs from the background
        assert grey[disk].std() > 30


def test_good_parts_are_tagged_and_leave_the_others_unchanged(tmp_path):
    from casting.data.supervisely import read_supervisely, write_supervisely

    plain = generate_records(6, seed=5, size=64, out_dir=str(tmp_path / "plain"))
    mixed = generate_records(6, seed=5, size=64, out_dir=str(tmp_path / "mixed"),
                             good_fraction=0.5)
    tags = [r.tags for r in mixed.records]
    assert ("good",) in tags and ("bad",) in tags and set(tags) <= {("good",), ("bad",)}
    for a, b in zip(plain.records, mixed.records):
        if b.tags == ("good",):
            assert [i.class_id for i in b.instances] == [1]  # the part only
        else:
            assert [i.class_id for i in b.instances] == [i.class_id for i in a.instances]
            np.testing.assert_array_equal(np.asarray(Image.open(a.image_path)),
                                          np.asarray(Image.open(b.image_path)))
    # the tags survive a Supervisely round trip (image tags in each annotation)
    back, _ = read_supervisely(write_supervisely(mixed, str(tmp_path / "sly")))
    assert [r.tags for r in back.records] == tags
    with pytest.raises(ValueError, match="good_fraction"):
        generate_records(1, seed=5, size=64, good_fraction=1.5)


def test_defects_visible_at_512():
    """At full size each defect's pixels differ from the ring of pixels around it."""
    from scipy import ndimage

    ds = generate_records(3, seed=1, size=512)
    contrasts = []
    for rec in ds.records:
        img = np.asarray(Image.open(rec.image_path))[..., 0].astype(float)
        for inst in rec.instances[1:]:
            ring = ndimage.binary_dilation(inst.mask, iterations=3) & ~inst.mask
            contrasts.append(abs(img[inst.mask].mean() - img[ring].mean()))
    assert len(contrasts) >= 5
    assert np.median(contrasts) > 15


def test_round_trip_supervisely_and_coco(synth, tmp_path):
    from pycocotools.coco import COCO

    from casting.data.coco import write_coco
    from casting.data.supervisely import write_supervisely

    write_supervisely(synth, str(tmp_path / "sly"), dataset_name="synthetic")
    path = write_coco(synth, str(tmp_path / "coco"))
    gt = COCO(path)  # pycocotools loads our output
    assert len(gt.getImgIds()) == 4
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == list(synth.class_names)
    for fmt_path in (tmp_path / "sly", tmp_path / "coco"):
        back = load_dataset(fmt_path)
        assert back.class_names == synth.class_names
        assert len(back.records) == len(synth.records)
        for r1, r2 in zip(synth.records, back.records):
            assert (r2.height, r2.width) == (128, 128)
            assert np.array_equal(np.asarray(Image.open(r1.image_path)),
                                  np.asarray(Image.open(r2.image_path)))
            for i1, i2 in zip(r1.instances, r2.instances, strict=True):
                assert i1.class_id == i2.class_id
                np.testing.assert_array_equal(i1.mask, i2.mask)
    # pycocotools decodes the same masks
    ann = gt.loadAnns(gt.getAnnIds(imgIds=[1]))
    np.testing.assert_array_equal(gt.annToMask(ann[0]).astype(bool),
                                  synth.records[0].instances[0].mask)


def test_cli_synth_both_and_convert(tmp_path):
    out = tmp_path / "out"
    assert cli(["synth", "--out", str(out), "--count", "2", "--seed", "3", "--size", "64",
                "--format", "both"]) == 0
    assert (out / "supervisely/meta.json").is_file()
    assert len(list((out / "supervisely/synthetic/img").iterdir())) == 2
    data = json.loads((out / "coco/annotations.json").read_text())
    assert len(data["images"]) == 2
    assert not [p for p in out.iterdir() if p.name.startswith("casting-synth")]  # temp gone
    assert cli(["convert", str(out / "supervisely"), str(tmp_path / "conv")]) == 0
    conv = load_dataset(tmp_path / "conv")
    ref = load_dataset(out / "coco")
    for r1, r2 in zip(ref.records, conv.records):
        for i1, i2 in zip(r1.instances, r2.instances, strict=True):
            np.testing.assert_array_equal(i1.mask, i2.mask)


def test_defect_masks_do_not_overlap_each_other():
    ds = generate_records(6, seed=11, size=256)
    for rec in ds.records:
        defects = [i.mask for i in rec.instances if i.class_id != 1]
        if defects:
            stacked = np.stack(defects).astype(int)
            assert stacked.sum(axis=0).max() <= 1


def test_defects_keep_their_real_pixel_size_down_to_256():
    """From 512 down to 256 px the defects keep the pixel size of the real 512-px photos
    (the part shrinks, they do not); below 256 px they shrink with the image."""
    from casting.data.synthetic import defect_scale

    assert [defect_scale(s) for s in (1024, 512, 384, 256, 128, 64)] == [2.0, 1.0, 1.0, 1.0,
                                                                          0.5, 0.4]

    def median_areas(size):
        ds = generate_records(6, seed=3, size=size)
        areas = {}
        for rec in ds.records:
            for inst in rec.instances:
                areas.setdefault(ds.class_names[inst.class_id - 1], []).append(inst.area)
        return {name: float(np.median(a)) for name, a in areas.items()}

    at_512, at_256 = median_areas(512), median_areas(256)
    assert at_256["disk"] < 0.35 * at_512["disk"]  # the part is about a quarter of the area
    for name in ("chipping", "deburring"):
        assert 0.6 < at_256[name] / at_512[name] < 1.6, (name, at_256, at_512)
