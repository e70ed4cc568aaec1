"""Inference by tiles: a large frame is cut into overlapping tiles at native scale, each tile
goes through the model (in batches), and the detections come back to frame pixels, merged
across tile borders.

* :func:`parse_tile` - a ``tile`` option (None / "off" / "on" / "auto" / "768" /
  "tile_size=512,overlap=64,full_pass=1" / a dict / a `TileSpec`) -> `TileSpec` or None.
  ``$CASTING_TILE`` is the default when the option is not given (see :func:`tile_default`).
* :func:`tile_grid` - the tile windows of an image: every pixel covered, every tile inside
  the image, the last tile flush with the far border, neighbours overlapping by at least
  ``overlap`` px, one tile when the image fits.
* :func:`merge_pieces` - greedy by score: a detection of the same class whose mask overlaps
  a kept one by at least ``merge_threshold`` (intersection over the smaller mask; for a
  piece cut by a tile border, IoU where both crops overlap) is the same object; where one
  of them was cut, their masks are united.
* :func:`detect_tiled` - the whole path for one image, with an optional full-image pass
  whose large detections (a box side of at least half a tile, or a class in
  ``large_classes``) replace the tile pieces they cover.

Masks stay box-local crops (`Piece`) until :func:`paste` writes the final [K, H, W] array,
so a frame costs ``batch`` tiles of model output plus the crops, not K full frames per tile.
The result is the dict ``model.detect`` gives for one image.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from casting.inputs import ParameterError
from casting.masks import mask_to_yxyx

TILE_ENV = "CASTING_TILE"
MODES = ("on", "auto")
_OFF = ("", "0", "off", "false", "no", "none")
_HELP = ("tile is 'off', 'on', 'auto', a tile size, or comma-separated key=value with keys "
         "mode, tile_size, overlap, full_pass, batch, auto_factor, merge_threshold, "
         "large_classes (separated by '+')")


@dataclass(frozen=True)
class TileSpec:
    mode: str = "on"  # "on": always tile; "auto": when a side > auto_factor x image_size
    tile_size: int = 0  # 0: the model's image_size (tiles then reach the model at scale 1)
    overlap: int = 64  # px shared by neighbouring tiles (at least)
    full_pass: bool = True  # also run the whole frame resized, for objects larger than tiles
    batch: int = 4  # tiles per model call
    auto_factor: float = 1.5
    merge_threshold: float = 0.5  # intersection over the smaller mask
    large_classes: tuple[str, ...] = field(default=())  # taken from the full pass only

    def check(self) -> "TileSpec":
        def bad(name: str, problem: str, fix: str) -> ParameterError:
            return ParameterError(f"tile {name} {problem}; {fix}")

        if self.mode not in MODES:
            raise bad("mode", f"is {self.mode!r}", f"use one of {list(MODES)}")
        if self.tile_size != 0 and not 64 <= self.tile_size <= 8192:
            raise bad("tile_size", f"is {self.tile_size}", "use 0 (the model's image_size) "
                      "or 64..8192 px")
        if self.overlap < 0 or (self.tile_size and self.overlap * 2 > self.tile_size):
            raise bad("overlap", f"is {self.overlap} px", "use 0 up to half of tile_size "
                      f"({self.tile_size or 'the model image_size'})")
        if not 1 <= self.batch <= 64:
            raise bad("batch", f"is {self.batch}", "use 1..64 tiles per model call")
        if not 1.0 <= self.auto_factor <= 64.0:
            raise bad("auto_factor", f"is {self.auto_factor}", "use 1..64")
        if not 0.0 < self.merge_threshold <= 1.0:
            raise bad("merge_threshold", f"is {self.merge_threshold}", "use a number in (0, 1]")
        return self


_KEYS = {"mode": str, "tile_size": int, "overlap": int, "full_pass": "bool", "batch": int,
         "auto_factor": float, "merge_threshold": float, "large_classes": "names"}


def _value(key: str, raw: Any) -> Any:
    kind = _KEYS[key]
    try:
        if kind == "bool":
            text = str(raw).strip().lower()
            if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError
            return text in ("1", "true", "yes", "on")
        if kind == "names":
            items = raw if isinstance(raw, (list, tuple)) else str(raw).split("+")
            return tuple(str(v).strip() for v in items if str(v).strip())
        if kind is int and (isinstance(raw, bool) or float(raw) != int(float(raw))):
            raise ValueError
        return int(float(raw)) if kind is int else kind(raw)
    except (TypeError, ValueError):
        raise ParameterError(f"tile {key} must be {getattr(kind, '__name__', kind)}, not "
                             f"{raw!r}; {_HELP}") from None


def parse_tile(value: Any) -> TileSpec | None:
    """A ``tile`` option -> a checked `TileSpec`, or None (no tiling). ParameterError names
    the bad part and what is accepted."""
    if isinstance(value, TileSpec):
        return value.check()
    if value is None or value is False:
        return None
    if value is True:
        return TileSpec()
    if isinstance(value, dict):
        items = dict(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = {"tile_size": value}
    elif isinstance(value, str):
        text = value.strip()
        if text.lower() in _OFF:
            return None
        items = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, sep, raw = part.partition("=")
            if not sep:
                low = part.lower()
                key, raw = ("mode", low) if low in MODES else ("tile_size", part)
            items[key.strip()] = raw.strip()
    else:
        raise ParameterError(f"tile must be a string or an object, not {value!r}; {_HELP}")
    unknown = sorted(set(items) - set(_KEYS))
    if unknown:
        raise ParameterError(f"unknown tile option(s) {unknown}; {_HELP}")
    return TileSpec(**{k: _value(k, v) for k, v in items.items()}).check()


def tile_default() -> TileSpec | None:  # $CASTING_TILE (unset: no tiling)
    return parse_tile(os.environ.get(TILE_ENV))


def resolve(spec: TileSpec | None, height: int, width: int, image_size: int
            ) -> TileSpec | None:
    """The spec that applies to one image (tile_size filled in), or None to run it whole."""
    if spec is None:  # no tiling
        return None
    spec = replace(spec, tile_size=spec.tile_size or int(image_size)).check()
    if spec.mode == "auto" and max(height, width) <= spec.auto_factor * image_size:
        return None
    return spec


# ---- geometry ------------------------------------------------------------------------------
def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    n = math.ceil((length - tile) / stride) + 1
    return sorted({int(round(v)) for v in np.linspace(0, length - tile, n)})


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tile windows ``(y1, x1, y2, x2)`` (far edges exclusive), rows first."""
    if height < 1 or width < 1 or tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"bad grid: {height}x{width}, tile {tile}, overlap {overlap}")
    return [(y, x, min(y + tile, height), min(x + tile, width))
            for y in _starts(height, tile, overlap) for x in _starts(width, tile, overlap)]


@dataclass
class Piece:
    """One detection in frame pixels, its mask a crop whose top-left pixel is (y0, x0)."""

    box: np.ndarray  # float32 (y1, x1, y2, x2)
    class_id: int
    score: float
    mask: np.ndarray  # bool [h, w]
    y0: int
    x0: int
    cut: bool = False  # touches a tile border inside the frame

    @cached_property
    def area(self) -> int:  # counted once: merging compares every pair (masks never change)
        return int(np.count_nonzero(self.mask))


def pieces_from_tile(det: dict[str, Any], window: tuple[int, int, int, int], height: int,
                     width: int, margin: float = 2.0) -> list[Piece]:
    """``model.detect`` output of one tile -> Pieces in frame pixels, masks cropped."""
    ty1, tx1, ty2, tx2 = window
    inner = np.array([ty1 > 0, tx1 > 0, ty2 < height, tx2 < width])
    masks = np.asarray(det["masks"]).astype(bool, copy=False)
    out = []
    for k, (box, cid, score) in enumerate(zip(np.asarray(det["boxes"], np.float32).reshape(-1, 4),
                                              det["class_ids"], det["scores"])):
        y1, x1, y2, x2 = mask_to_yxyx(masks[k]) if masks.size else (0, 0, 0, 0)
        near = np.array([box[0] <= margin, box[1] <= margin,
                         box[2] >= (ty2 - ty1) - margin, box[3] >= (tx2 - tx1) - margin])
        out.append(Piece(box + np.float32([ty1, tx1, ty1, tx1]), int(cid), float(score),
                         masks[k, y1:y2, x1:x2].copy() if masks.size else
                         np.zeros((0, 0), bool), ty1 + y1, tx1 + x1, bool((near & inner).any())))
    return out


def _window(a: Piece, b: Piece) -> tuple[np.ndarray, np.ndarray] | None:
    """Both masks over the pixels their crops share (None when the crops are apart)."""
    y1, x1 = max(a.y0, b.y0), max(a.x0, b.x0)
    y2 = min(a.y0 + a.mask.shape[0], b.y0 + b.mask.shape[0])
    x2 = min(a.x0 + a.mask.shape[1], b.x0 + b.mask.shape[1])
    if y2 <= y1 or x2 <= x1:
        return None
    return (a.mask[y1 - a.y0:y2 - a.y0, x1 - a.x0:x2 - a.x0],
            b.mask[y1 - b.y0:y2 - b.y0, x1 - b.x0:x2 - b.x0])


def similarity(a: Piece, b: Piece) -> float:
    """How surely two pieces are one object: intersection over the smaller mask; where
    either was cut by a tile border, the masks' IoU over the window their crops share (two
    pieces of one object agree where both tiles saw it)."""
    shared = _window(a, b)
    if shared is None:
        return 0.0
    inter = int(np.count_nonzero(shared[0] & shared[1]))
    if a.cut or b.cut:
        union = int(np.count_nonzero(shared[0] | shared[1]))
        return inter / union if union else 0.0
    smaller = min(a.area, b.area)
    return inter / smaller if smaller else 0.0


def unite(a: Piece, b: Piece) -> Piece:
    """One piece covering both masks (box: the union of both boxes), a's class, best score."""
    y0, x0 = min(a.y0, b.y0), min(a.x0, b.x0)
    y2 = max(a.y0 + a.mask.shape[0], b.y0 + b.mask.shape[0])
    x2 = max(a.x0 + a.mask.shape[1], b.x0 + b.mask.shape[1])
    mask = np.zeros((y2 - y0, x2 - x0), bool)
    for p in (a, b):
        mask[p.y0 - y0:p.y0 - y0 + p.mask.shape[0], p.x0 - x0:p.x0 - x0 + p.mask.shape[1]] |= p.mask
    box = np.concatenate([np.minimum(a.box[:2], b.box[:2]), np.maximum(a.box[2:], b.box[2:])])
    return Piece(box.astype(np.float32), a.class_id, max(a.score, b.score), mask, y0, x0,
                 a.cut or b.cut)


def merge_pieces(pieces: Sequence[Piece], threshold: float = 0.5) -> list[Piece]:
    """Greedy by score: a piece of a kept piece's class overlapping it by ``threshold`` of
    `similarity` joins it (masks united when either was cut by a tile border, else the
    higher-scoring one stays as it is). Returned highest score first."""
    kept: list[Piece] = []
    for p in sorted(pieces, key=lambda q: -q.score):
        hits = [i for i, k in enumerate(kept)
                if k.class_id == p.class_id and similarity(k, p) >= threshold]
        if not hits:
            kept.append(p)
        elif p.cut or any(kept[i].cut for i in hits):  # pieces of one object: unite them
            for i in hits:  # (p may join pieces that were apart until now)
                p = unite(kept[i], p)
            kept = [k for i, k in enumerate(kept) if i not in hits] + [p]
    return sorted(kept, key=lambda q: -q.score)


def paste(pieces: Sequence[Piece], height: int, width: int) -> dict[str, Any]:
    """Pieces -> the dict ``model.detect`` gives for one image (masks [K, H, W])."""
    masks = np.zeros((len(pieces), height, width), bool)
    for k, p in enumerate(pieces):
        masks[k, p.y0:p.y0 + p.mask.shape[0], p.x0:p.x0 + p.mask.shape[1]] = p.mask
    boxes = np.array([p.box for p in pieces], np.float32).reshape(-1, 4)
    boxes = np.clip(boxes, 0, np.float32([height, width, height, width]))
    return {"boxes": boxes, "class_ids": np.array([p.class_id for p in pieces], np.int32),
            "scores": np.array([p.score for p in pieces], np.float32), "masks": masks}


# ---- the whole path ------------------------------------------------------------------------
def _full_pass(model: Any, image: np.ndarray, image_size: int, min_confidence: Any
               ) -> list[Piece]:
    """The frame resized to image_size through the model, pieces scaled back (crops only)."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = min(1.0, image_size / max(height, width))
    small = image if scale == 1.0 else np.asarray(Image.fromarray(image).resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR))
    (det,) = model.detect([small], min_confidence=min_confidence)
    sy, sx = small.shape[0] / height, small.shape[1] / width
    out = []
    for p in pieces_from_tile(det, (0, 0) + small.shape[:2], *small.shape[:2]):
        box = p.box / np.float32([sy, sx, sy, sx])
        y1, x1 = (int(math.floor(v)) for v in box[:2])
        y2, x2 = min(height, int(math.ceil(box[2]))), min(width, int(math.ceil(box[3])))
        rows = np.clip(((np.arange(y1, y2) + 0.5) * sy).astype(int) - p.y0, 0, None)
        cols = np.clip(((np.arange(x1, x2) + 0.5) * sx).astype(int) - p.x0, 0, None)
        inside = (rows[:, None] < p.mask.shape[0]) & (cols[None, :] < p.mask.shape[1])
        crop = np.zeros((len(rows), len(cols)), bool)
        if p.mask.size:
            r, c = np.minimum(rows, p.mask.shape[0] - 1), np.minimum(cols, p.mask.shape[1] - 1)
            crop = p.mask[r[:, None], c[None, :]] & inside
        out.append(Piece(box, p.class_id, p.score, crop, y1, x1))
    return out


def detect_tiled(model: Any, image: np.ndarray, spec: TileSpec, min_confidence: Any = None,
                 class_names: Sequence[str] = (), max_detections: int = 100
                 ) -> dict[str, Any]:
    """One image through the model by tiles (``spec`` resolved: tile_size set)."""
    height, width = image.shape[:2]
    windows = tile_grid(height, width, spec.tile_size, spec.overlap)
    large_ids = {class_names.index(n) + 1 for n in spec.large_classes if n in class_names}
    pieces: list[Piece] = []
    for start in range(0, len(windows), spec.batch):
        chunk = windows[start:start + spec.batch]
        tiles = [image[y1:y2, x1:x2] for y1, x1, y2, x2 in chunk]
        for window, det in zip(chunk, model.detect(tiles, min_confidence=min_confidence,
                                                      batch_size=len(tiles))):
            pieces.extend(p for p in pieces_from_tile(det, window, height, width)
                          if p.class_id not in large_ids)
    pieces = merge_pieces(pieces, spec.merge_threshold)
    if spec.full_pass and len(windows) > 1:
        image_size = int(getattr(getattr(model, "config", None), "image_size", spec.tile_size))
        large = [p for p in _full_pass(model, image, image_size, min_confidence)
                 if p.class_id in large_ids
                 or max(p.box[2] - p.box[0], p.box[3] - p.box[1]) >= spec.tile_size / 2]
        pieces = large + [p for p in pieces if not any(
            q.class_id == p.class_id and similarity(q, p) >= spec.merge_threshold
            for q in large)]
        pieces.sort(key=lambda q: -q.score)
    return paste(pieces[:max_detections], height, width)


def detect(model: Any, images: Sequence[np.ndarray], spec: TileSpec | None,
           min_confidence: Any = None) -> list[dict[str, Any]]:
    """``model.detect`` for a list of images, tiling those the spec says to tile."""
    if spec is None:
        return model.detect(list(images), min_confidence=min_confidence)
    config = model.config
    out: list[dict[str, Any] | None] = [None] * len(images)
    whole = []
    for i, im in enumerate(images):
        resolved = resolve(spec, im.shape[0], im.shape[1], int(config.image_size))
        if resolved is None:
            whole.append(i)
        else:
            out[i] = detect_tiled(model, im, resolved, min_confidence,
                                  tuple(config.class_names),
                                  int(getattr(config, "detection_max_instances", 100)))
    if whole:
        for i, det in zip(whole, model.detect([images[i] for i in whole],
                                              min_confidence=min_confidence)):
            out[i] = det
    return out  # type: ignore[return-value]
