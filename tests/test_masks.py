"""casting.masks: RLE and polygon round trips against pycocotools' own decoding."""

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from casting import masks


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


def _shapes():
    h, w = 37, 53
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - 18) ** 2 + (xx - 25) ** 2 <= 12 ** 2
    ring = disk & ~((yy - 18) ** 2 + (xx - 25) ** 2 <= 5 ** 2)
    rect = np.zeros((h, w), bool)
    rect[3:10, 40:53] = True  # touches the right border
    two = rect.copy()
    two[25:35, 2:9] = True
    single = np.zeros((h, w), bool)
    single[0, 0] = True
    return {"disk": disk, "ring": ring, "rect": rect, "two": two, "single": single}


@pytest.mark.parametrize("name", list(_shapes()))
def test_rle_round_trip_exact_and_json_ready(name):
    m = _shapes()[name]
    rle = masks.mask_to_rle(m)
    assert rle["size"] == [37, 53]
    assert isinstance(rle["counts"], str)
    back = masks.rle_to_mask(json.loads(json.dumps(rle)))
    assert back.dtype == bool and np.array_equal(back, m)
    # pycocotools agrees on the decoding and the area
    ref = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(ref.astype(bool), m)
    assert masks.rle_area(rle) == int(m.sum())
    assert masks.rle_to_bbox(rle) == masks.mask_to_bbox(m)


def test_masks_to_rles_matches_single_and_handles_empty():
    shapes = _shapes()
    stack = np.stack([shapes["disk"], shapes["rect"], np.zeros((37, 53), bool)])
    rles = masks.masks_to_rles(stack)
    assert [r["counts"] for r in rles] == [masks.mask_to_rle(m)["counts"] for m in stack]
    assert masks.rle_area(rles[2]) == 0
    assert masks.masks_to_rles(np.zeros((0, 4, 5), bool)) == []
    with pytest.raises(ValueError):
        masks.masks_to_rles(np.zeros((4, 5), bool))


def test_uncompressed_rle_input():
    m = _shapes()["rect"]
    # column-major run lengths, starting with zeros
    flat = m.flatten(order="F").astype(np.uint8)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = v, 1
    runs.append(n)
    assert np.array_equal(masks.rle_to_mask({"size": [37, 53], "counts": runs}), m)


def test_bbox_is_xywh_with_exclusive_far_edge():
    m = np.zeros((20, 30), bool)
    m[4:9, 10:17] = True
    assert masks.mask_to_bbox(m) == [10.0, 4.0, 7.0, 5.0]
    assert masks.mask_to_bbox(np.zeros((3, 3), bool)) == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", ["disk", "rect", "two"])
def test_polygons_round_trip_closely(name):
    m = _shapes()[name]
    polys = masks.mask_to_polygons(m)
    assert polys and all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
    for p in polys:
        xs, ys = np.array(p[0::2]), np.array(p[1::2])
        assert xs.min() >= 0 and xs.max() <= 53 and ys.min() >= 0 and ys.max() <= 37
    back = masks.polygons_to_mask(polys, 37, 53)
    assert _iou(back, m) > 0.9, _iou(back, m)
    assert len(polys) == (2 if name == "two" else 1)


def test_polygon_rectangle_follows_pixel_edges():
    m = np.zeros((10, 10), bool)
    m[2:5, 3:8] = True
    (poly,) = masks.mask_to_polygons(m, tolerance=0.5)
    xs, ys = poly[0::2], poly[1::2]
    assert min(xs) == pytest.approx(3, abs=0.5) and max(xs) == pytest.approx(8, abs=0.5)
    assert min(ys) == pytest.approx(2, abs=0.5) and max(ys) == pytest.approx(5, abs=0.5)
    assert _iou(masks.polygons_to_mask([poly], 10, 10), m) > 0.85


def test_polygons_of_empty_mask_and_simplification():
    assert masks.mask_to_polygons(np.zeros((8, 8), bool)) == []
    disk = _shapes()["disk"]
    full = masks.mask_to_polygons(disk)[0]
    simple = masks.mask_to_polygons(disk, tolerance=1.5)[0]
    assert len(simple) < len(full)
    assert _iou(masks.polygons_to_mask([simple], 37, 53), disk) > 0.85


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        masks.mask_to_rle(np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError):
        masks.rle_to_mask({"counts": "abc"})
