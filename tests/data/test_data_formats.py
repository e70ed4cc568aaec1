"""Supervisely and COCO readers on handmade fixtures: every geometry, exact masks."""


import numpy as np
import pytest
from skimage.measure import label

from casting.data import DatasetError, detect_format, load_dataset, read_dataset, split_records


def _by_class(rec, names):
    out = {}
    for inst in rec.instances:
        out.setdefault(names[inst.class_id - 1], []).append(inst)
    return out


def test_supervisely_every_geometry_exact(sly_project):
    assert detect_format(sly_project) == "supervisely"
    ds, report = read_dataset(sly_project)
    assert report.ok, report.text()
    assert ds.class_names == ("disk", "holes", "chipping", "deburring")  # meta.json order
    recs = {r.image_id: r for r in ds.records}
    assert set(recs) == {"ds1/a.png", "ds1/datasets/child/b.jpg"}
    a = _by_class(recs["ds1/a.png"], ds.class_names)
    assert (recs["ds1/a.png"].height, recs["ds1/a.png"].width) == (16, 20)

    # polygon with a hole: 11x11 filled square minus the 4x4 hole
    disk = a["disk"][0].mask
    expected = np.zeros((16, 20), bool)
    expected[2:13, 2:13] = True
    expected[5:9, 5:9] = False
    np.testing.assert_array_equal(disk, expected)

    # rectangle with inclusive corners given in either order
    rect = np.zeros((16, 20), bool)
    rect[1:4, 14:18] = True
    np.testing.assert_array_equal(a["chipping"][0].mask, rect)

    # bitmap touching the bottom-right edge, origin [x, y]
    bm = np.zeros((16, 20), bool)
    bm[13:16, 16:20] = [[0, 0, 0, 1], [0, 0, 1, 1], [1, 1, 1, 1]]
    np.testing.assert_array_equal(a["deburring"][0].mask, bm)
    assert a["deburring"][0].bbox() == (13, 16, 16, 20)

    # alpha mask: alpha >= 128
    am = np.zeros((16, 20), bool)
    am[0, 0:2] = True
    am[1, 1:3] = True
    np.testing.assert_array_equal(a["holes"][0].mask, am)
    assert len(a["holes"]) == 1  # the point geometry is skipped ...
    assert report.warnings["skipped geometry type 'point'"] == 1  # ... and counted
    assert "skipped geometry type 'point' (1)" in report.text()

    # nested dataset, annotation named without the extension, origin as a string, palette
    b = recs["ds1/datasets/child/b.jpg"].instances
    pal = np.zeros((8, 8), bool)
    pal[4, 3] = pal[5, 3] = pal[5, 4] = True
    assert len(b) == 1 and b[0].class_id == 2
    np.testing.assert_array_equal(b[0].mask, pal)


def test_supervisely_without_meta_and_class_map(sly_project):
    (sly_project / "meta.json").unlink()
    ds = load_dataset(sly_project)
    assert ds.class_names == ("chipping", "deburring", "disk", "holes")  # sorted, no meta
    ds = load_dataset(sly_project, class_map={"holes": "blowhole", "chipping": "defect",
                                              "deburring": "defect", "disk": None},
                      class_names=["defect", "blowhole"])
    assert ds.class_names == ("defect", "blowhole")
    counts = ds.class_counts()
    assert counts == {"defect": 2, "blowhole": 2}
    assert all(i.class_id in (1, 2) for r in ds.records for i in r.instances)


def test_class_names_without_mapping_is_an_unknown_class(sly_project):
    with pytest.raises(DatasetError) as err:
        load_dataset(sly_project, class_names=["holes"])
    msg = str(err.value)
    assert "unknown class" in msg and "'disk'" in msg and "a.png.json" in msg


def test_coco_ids_segmentations_crowd(coco_dir):
    assert detect_format(coco_dir) == "coco"
    assert detect_format(coco_dir / "annotations.json") == "coco"
    ds = load_dataset(coco_dir)
    # category ids 3, 7, 42 -> class ids 1, 2, 3 (ordered by id) and back
    assert ds.class_names == ("disk", "holes", "chipping")
    assert ds.source_category_ids == {1: 3, 2: 7, 3: 42}
    recs = {r.image_id: r for r in ds.records}
    assert set(recs) == {"sub/x.png", "y.png"}
    assert recs["sub/x.png"].image_path.endswith("images/sub/x.png")
    assert recs["sub/x.png"].source_id == 10
    assert recs["y.png"].instances == []  # an image without annotations is kept

    insts = recs["sub/x.png"].instances
    assert [(i.class_id, i.iscrowd) for i in insts] == [(1, False), (2, False), (3, False),
                                                       (2, True)]
    poly = insts[0].mask
    assert label(poly, connectivity=1).max() == 2  # two polygon parts, one instance
    assert poly[1, 1] and poly[7, 8] and not poly[5, 5]
    odd = np.zeros((10, 12), bool)
    odd[3:7, 2] = True  # uncompressed RLE [23, 4, 93]: odd number of counts, column-major
    np.testing.assert_array_equal(insts[1].mask, odd)
    comp = np.zeros((10, 12), bool)
    comp[0:2, 10:12] = True
    np.testing.assert_array_equal(insts[2].mask, comp)
    crowd = np.zeros((10, 12), bool)
    crowd[0:2, 0] = True
    np.testing.assert_array_equal(insts[3].mask, crowd)


def test_coco_write_keeps_source_category_ids(coco_dir, tmp_path):
    from pycocotools.coco import COCO

    from casting.data.coco import write_coco

    ds = load_dataset(coco_dir)
    path = write_coco(ds, str(tmp_path / "out"))
    gt = COCO(path)
    assert sorted(gt.getCatIds()) == [3, 7, 42]
    again = load_dataset(path)
    for r1, r2 in zip(ds.records, again.records):
        assert r1.image_id == r2.image_id
        for i1, i2 in zip(r1.instances, r2.instances, strict=True):
            assert (i1.class_id, i1.iscrowd) == (i2.class_id, i2.iscrowd)
            np.testing.assert_array_equal(i1.mask, i2.mask)


def test_detect_format_rejects_other_folders(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DatasetError, match="neither a Supervisely project"):
        detect_format(tmp_path)


def test_split_records_deterministic_and_disjoint():
    from casting.data.records import DatasetRecords, Record

    ds = DatasetRecords(("a",), [Record(str(i), f"{i}.jpg", 4, 4) for i in range(10)])
    tr, va = split_records(ds, 0.3, seed=1)
    tr2, va2 = split_records(ds, 0.3, seed=1)
    ids = lambda d: [r.image_id for r in d.records]  # noqa: E731
    assert ids(tr) == ids(tr2) and ids(va) == ids(va2)
    assert len(va.records) == 3 and not set(ids(tr)) & set(ids(va))
    assert sorted(ids(tr) + ids(va), key=int) == [str(i) for i in range(10)]
    assert ids(split_records(ds, 0.3, seed=2)[1]) != ids(va)
