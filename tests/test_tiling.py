"""casting.tiling: tile geometry, mapping back, merging across borders, options; one run of
the real tiny model through Predictor by tiles."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from casting import tiling
from casting.inputs import ParameterError
from casting.masks import mask_to_yxyx

try:
    from test_serving import build_test_model_dir
except ImportError:  # pragma: no cover - run from the repository root
    from tests.test_serving import build_test_model_dir


# ---- geometry ------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w,tile,overlap", [
    (100, 100, 128, 16), (128, 128, 128, 16), (129, 300, 128, 16), (1000, 777, 256, 64),
    (2048, 2048, 512, 64), (513, 64, 512, 0), (300, 301, 100, 50),
])
def test_grid_covers_every_pixel_inside_the_image(h, w, tile, overlap):
    windows = tiling.tile_grid(h, w, tile, overlap)
    covered = np.zeros((h, w), np.int32)
    for y1, x1, y2, x2 in windows:
        assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
        assert y2 - y1 == min(tile, h) and x2 - x1 == min(tile, w)  # all tiles full size
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1
    assert max(y2 for _, _, y2, _ in windows) == h and max(x2 for *_, x2 in windows) == w
    ys = sorted({y1 for y1, *_ in windows})
    xs = sorted({x1 for _, x1, *_ in windows})
    for starts, length in ((ys, h), (xs, w)):
        assert starts[0] == 0
        for a, b in zip(starts, starts[1:]):
            assert min(tile, length) - (b - a) >= overlap  # neighbours share >= overlap px
    if h <= tile and w <= tile:
        assert windows == [(0, 0, h, w)]


def test_grid_rejects_bad_geometry():
    with pytest.raises(ValueError):
        tiling.tile_grid(100, 100, 64, 64)


# ---- merging -------------------------------------------------------------------------------
def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _oracle_det(objects, window, large_only=False):
    """What a perfect model answers for one tile: each object's mask inside the window."""
    y1, x1, y2, x2 = window
    boxes, ids, scores, masks = [], [], [], []
    for mask, cid, score in objects:
        crop = mask[y1:y2, x1:x2]
        if crop.any():
            boxes.append(mask_to_yxyx(crop))
            ids.append(cid)
            scores.append(score)
            masks.append(crop)
    k = len(ids)
    return {"boxes": np.array(boxes, np.float32).reshape(k, 4),
            "class_ids": np.array(ids, np.int32), "scores": np.array(scores, np.float32),
            "masks": np.array(masks, bool).reshape(k, y2 - y1, x2 - x1)}


def _tiled_pieces(objects, h, w, tile, overlap):
    pieces = []
    for window in tiling.tile_grid(h, w, tile, overlap):
        pieces += tiling.pieces_from_tile(_oracle_det(objects, window), window, h, w)
    return pieces


def test_object_cut_by_tile_borders_comes_back_whole():
    h = w = 300  # tiles of 200 at 0 and 100: borders at 100 and 200 inside the frame
    cut = _disc(h, w, 150, 195, 30)  # crosses x = 200 and lies in the overlap band's edge
    corner = _disc(h, w, 200, 200, 25)  # at a four-tile corner
    objects = [(cut, 1, 0.9), (corner, 2, 0.8)]
    pieces = _tiled_pieces(objects, h, w, 200, 100)
    assert sum(p.class_id == 1 for p in pieces) > 1  # seen (partly) by several tiles
    assert any(p.cut for p in pieces)
    merged = tiling.merge_pieces(pieces, 0.5)
    out = tiling.paste(merged, h, w)
    assert list(out["class_ids"]) == [1, 2] and out["masks"].shape == (2, h, w)
    assert np.array_equal(out["masks"][0], cut) and np.array_equal(out["masks"][1], corner)
    np.testing.assert_allclose(out["boxes"][0], mask_to_yxyx(cut))
    np.testing.assert_allclose(out["scores"], [0.9, 0.8])


def test_duplicates_merge_but_neighbours_and_other_classes_stay():
    h, w = 200, 300  # tiles 0..200 and 100..300 along x
    inside_overlap = _disc(h, w, 100, 150, 12)  # whole in both tiles: a pure duplicate
    touching = _disc(h, w, 100, 176, 12)  # next to it, same class, no shared pixels
    other_class = _disc(h, w, 100, 150, 10)  # same place, another class
    objects = [(inside_overlap, 1, 0.9), (touching, 1, 0.7), (other_class, 3, 0.6)]
    merged = tiling.merge_pieces(_tiled_pieces(objects, h, w, 200, 100))
    out = tiling.paste(merged, h, w)
    assert sorted(out["class_ids"].tolist()) == [1, 1, 3]
    for k, mask in enumerate([inside_overlap, touching, other_class]):
        assert np.array_equal(out["masks"][k], mask)


def test_piece_maps_tile_pixels_to_frame_and_keeps_a_crop():
    mask = np.zeros((64, 64), bool)
    mask[10:20, 30:34] = True
    det = {"boxes": np.array([[10, 30, 20, 34]], np.float32), "class_ids": np.array([2]),
           "scores": np.array([0.5], np.float32), "masks": mask[None]}
    (p,) = tiling.pieces_from_tile(det, (100, 200, 164, 264), 400, 400)
    assert (p.y0, p.x0) == (110, 230) and p.mask.shape == (10, 4) and p.area == 40
    np.testing.assert_allclose(p.box, [110, 230, 120, 234])
    assert not p.cut
    det["boxes"][0, 3] = 64  # reaches the tile's right edge, which is inside the frame
    assert tiling.pieces_from_tile(det, (100, 200, 164, 264), 400, 400)[0].cut
    assert not tiling.pieces_from_tile(det, (100, 336, 164, 400), 400, 400)[0].cut  # frame edge


class _Oracle:
    """A stand-in model: answers each image (tile or downscaled frame) with the ground truth
    seen in it, found by where the image came from."""

    def __init__(self, frame, objects, image_size):
        self.frame, self.objects = frame, objects
        self.config = SimpleNamespace(image_size=image_size, class_names=("disk", "holes"),
                                      detection_max_instances=50)
        self.calls = []

    def detect(self, images, min_confidence=None, batch_size=1):
        self.calls.append(len(images))
        out = []
        for im in images:
            if not np.shares_memory(im, self.frame):
                out.append(self._full(im))
                continue
            offset = (im.__array_interface__["data"][0]
                      - self.frame.__array_interface__["data"][0]) // 3
            y1, x1 = divmod(offset, self.frame.shape[1])  # a tile is a view of the frame
            window = (y1, x1, y1 + im.shape[0], x1 + im.shape[1])
            out.append(_oracle_det(self.objects, window))
        return out

    def _full(self, small):
        sy = small.shape[0] / self.frame.shape[0]
        step = int(round(1 / sy))
        objects = [(m[::step, ::step], c, s) for m, c, s in self.objects]
        return _oracle_det(objects, (0, 0) + small.shape[:2])


def test_detect_tiled_joins_the_full_pass_for_large_objects():
    h = w = 256
    frame = np.zeros((h, w, 3), np.uint8)
    disk = _disc(h, w, 128, 128, 100)
    hole = _disc(h, w, 64, 64, 6)
    model = _Oracle(frame, [(disk, 1, 0.95), (hole, 2, 0.9)], image_size=64)
    spec = tiling.resolve(tiling.parse_tile("overlap=16,batch=4"), h, w, 64)
    out = tiling.detect_tiled(model, frame, spec, 0.1, ("disk", "holes"), 50)
    assert model.calls[:-1] == [4] * 6 + [1] and model.calls[-1] == 1  # 25 tiles by 4 + full
    assert out["class_ids"].tolist() == [1, 2]
    assert np.array_equal(out["masks"][1], hole)
    iou = (out["masks"][0] & disk).sum() / (out["masks"][0] | disk).sum()
    assert 0.95 < iou < 1.0  # the full pass's mask, scaled back up from 64 px


# ---- options -------------------------------------------------------------------------------
def test_parse_tile_forms_and_errors(monkeypatch):
    assert tiling.parse_tile(None) is None and tiling.parse_tile("off") is None
    assert tiling.parse_tile("on") == tiling.TileSpec()
    assert tiling.parse_tile("auto").mode == "auto"
    assert tiling.parse_tile("768").tile_size == 768
    spec = tiling.parse_tile("tile_size=512, overlap=32,full_pass=0,large_classes=disk+rim")
    assert (spec.tile_size, spec.overlap, spec.full_pass) == (512, 32, False)
    assert spec.large_classes == ("disk", "rim")
    assert tiling.parse_tile({"mode": "auto", "batch": 2}).batch == 2
    for bad, name in [("tile_size=10", "tile_size"), ("overlap=300,tile_size=512", "overlap"),
                      ("batch=0", "batch"), ("mode=sometimes", "mode"),
                      ("full_pass=maybe", "full_pass"), ("overlap=1.5", "overlap"),
                      ("merge_threshold=0", "merge_threshold")]:
        with pytest.raises(ParameterError, match=f"tile {name}"):
            tiling.parse_tile(bad)
    with pytest.raises(ParameterError, match="unknown tile option"):
        tiling.parse_tile("stride=3")
    with pytest.raises(ParameterError, match="overlap"):  # half of the model's image_size
        tiling.resolve(tiling.parse_tile("overlap=40"), 500, 500, 64)
    monkeypatch.setenv(tiling.TILE_ENV, "auto,overlap=8")
    assert tiling.tile_default() == tiling.TileSpec(mode="auto", overlap=8)
    auto = tiling.tile_default()
    assert tiling.resolve(auto, 96, 90, 64) is None  # within 1.5 x image_size: whole
    assert tiling.resolve(auto, 97, 90, 64).tile_size == 64


def test_predictor_by_tiles_with_the_real_model(tmp_path_factory):
    from casting.inference import Predictor

    p = Predictor(build_test_model_dir(tmp_path_factory), warmup=False,
                  tile="tile_size=64,overlap=16,full_pass=1")
    rng = np.random.default_rng(1)
    image = np.full((150, 200, 3), 110, np.uint8)
    image[40:70, 90:130] = 40  # a dark patch across the tile border at x = 136 - 64 ...
    image = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
    (raw,) = p.detect([image], min_score=0.0)
    assert raw.masks.shape == (len(raw.class_ids), 150, 200)
    assert len(raw.class_ids) <= p.config.detection_max_instances
    assert np.all(np.diff(raw.scores) <= 0)
    dets = p.predict(image, min_score=0.0, tile="off")  # per call: the whole image
    assert all(set(d) == {"class_id", "class_name", "score", "box", "bbox", "area", "mask"}
               for d in dets)
    tiled = p.format(raw)
    assert all(d["mask"]["size"] == [150, 200] for d in tiled)
    with pytest.raises(ParameterError, match="tile overlap"):
        p.detect([image], tile="overlap=100")
