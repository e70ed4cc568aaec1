"""Instance masks <-> COCO run-length encoding (RLE) and polygons.

COCO RLE here is always the *compressed* form that ``pycocotools.mask.encode`` produces, with
``counts`` decoded to a ``str`` so it can go straight into JSON:
``{"size": [height, width], "counts": "..."}``.

Polygons are COCO segmentation polygons: a list of flat ``[x1, y1, x2, y2, ...]`` lists in
pixel coordinates (x = column, y = row), one list per connected outline, each with at least
three points. Outlines follow pixel edges (the contour is traced on the mask padded by one
pixel at half-pixel offsets), so rasterising a polygon gives back nearly the same pixels.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "mask_to_rle",
    "masks_to_rles",
    "rle_to_mask",
    "rle_area",
    "rle_to_bbox",
    "mask_to_polygons",
    "polygons_to_mask",
    "mask_to_bbox",
    "mask_to_yxyx",
]


def _as_2d_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _rle_for_json(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def _rle_for_coco(rle: dict[str, Any]) -> dict[str, Any]:
    """Accept JSON-style RLE (str counts) or uncompressed RLE (list counts)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE must be a dict with 'size' and 'counts'")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [h, w], "counts": counts}


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """One HxW boolean mask -> compressed COCO RLE with ``counts`` as ``str``."""
    mask = _as_2d_bool(mask)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return _rle_for_json(rle)


def masks_to_rles(masks: np.ndarray) -> list[dict[str, Any]]:
    """[K, H, W] boolean masks -> K RLEs (one pycocotools call)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be 3-D (K, H, W), got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(np.transpose(masks.astype(np.uint8), (1, 2, 0)))
    return [_rle_for_json(r) for r in mask_utils.encode(fortran)]


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed str/bytes counts or uncompressed list counts) -> HxW bool."""
    return mask_utils.decode(_rle_for_coco(rle)).astype(bool)


def rle_area(rle: dict[str, Any]) -> int:
    return int(mask_utils.area(_rle_for_coco(rle)))


def rle_to_bbox(rle: dict[str, Any]) -> list[float]:
    """COCO ``[x, y, width, height]`` of the mask's pixels (zeros for an empty mask)."""
    return [float(v) for v in mask_utils.toBbox(_rle_for_coco(rle))]


def mask_to_yxyx(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(y1, x1, y2, x2)`` of the mask's pixels, far edges exclusive; zeros when empty.
    The one mask-to-box of the project (records, COCO, Supervisely bitmaps, evaluation)."""
    mask = _as_2d_bool(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def mask_to_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, width, height]`` covering the mask's pixels (exclusive far edge)."""
    y1, x1, y2, x2 = mask_to_yxyx(mask)
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[list[float]]:
    """HxW boolean mask -> COCO polygons (list of flat [x, y, ...] lists).

    Each connected region's outer boundary (and each hole's boundary) becomes one polygon
    traced along pixel edges. ``tolerance`` > 0 simplifies the outlines
    (Douglas-Peucker, in pixels). Regions too small to give three distinct points are
    skipped, so an empty mask gives ``[]``.
    """
    from skimage import measure  # imported lazily: skimage is slow to import

    mask = _as_2d_bool(mask)
    if not mask.any():
        return []
    # Upsample by 2 so that a contour at level 0.5 runs along pixel edges, padded so that
    # regions touching the border are closed.
    up = np.kron(mask.astype(np.uint8), np.ones((2, 2), dtype=np.uint8))
    padded = np.pad(up, 1, mode="constant")
    polygons: list[list[float]] = []
    for contour in measure.find_contours(padded, 0.5):
        # contour is (row, col) in padded upsampled coordinates; map back to pixel edges.
        contour = (contour - 1.0 + 0.5) / 2.0
        contour = np.round(contour * 2.0) / 2.0
        if tolerance > 0:
            contour = measure.approximate_polygon(contour, tolerance)
        # drop the closing duplicate and consecutive duplicates
        if len(contour) > 1 and np.allclose(contour[0], contour[-1]):
            contour = contour[:-1]
        if len(contour) == 0:
            continue
        keep = np.ones(len(contour), dtype=bool)
        keep[1:] = np.any(np.diff(contour, axis=0) != 0, axis=1)
        contour = contour[keep]
        if len(np.unique(contour, axis=0)) < 3:
            continue
        xy = np.stack([contour[:, 1], contour[:, 0]], axis=1).reshape(-1)
        polygons.append([float(v) for v in xy])
    return polygons


def polygons_to_mask(polygons: Sequence[Iterable[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons -> HxW bool (their union; holes are not subtracted)."""
    polygons = [list(map(float, p)) for p in polygons]
    polygons = [p for p in polygons if len(p) >= 6]
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects(polygons, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
