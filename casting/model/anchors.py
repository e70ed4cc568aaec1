"""Anchor generation for the feature pyramid (P2-P6).

Order (the order of the RPN's per-anchor outputs): levels P2..P6 concatenated; within a level,
positions row-major (y then x); within a position, the aspect ratios in the config's order.
Ratios are width / height: height = scale / sqrt(ratio), width = scale * sqrt(ratio). An anchor
at grid position (i, j) of a level with stride s is centred on ((i + 0.5) s, (j + 0.5) s), the
centre of the image patch that feature cell covers.
"""

from __future__ import annotations

import numpy as np


def feature_shapes(image_size: int, strides) -> list[tuple[int, int]]:
    """Feature map size of each pyramid level for a square input of `image_size`."""
    return [(int(np.ceil(image_size / s)), int(np.ceil(image_size / s))) for s in strides]


def level_anchors(scale: float, ratios, shape: tuple[int, int], stride: int) -> np.ndarray:
    """Anchors (y1, x1, y2, x2) of one level: [shape[0] * shape[1] * len(ratios), 4]."""
    ratios = np.asarray(ratios, np.float64)
    heights = scale / np.sqrt(ratios)
    widths = scale * np.sqrt(ratios)
    cy = (np.arange(shape[0]) + 0.5) * stride
    cx = (np.arange(shape[1]) + 0.5) * stride
    cy, cx = np.meshgrid(cy, cx, indexing="ij")  # [H, W]
    cy = cy[..., None]
    cx = cx[..., None]
    boxes = np.stack(
        [cy - 0.5 * heights, cx - 0.5 * widths, cy + 0.5 * heights, cx + 0.5 * widths], axis=-1
    )  # [H, W, A, 4]
    return boxes.reshape(-1, 4)


def generate_anchors(image_size: int, scales, ratios, strides) -> np.ndarray:
    """All anchors of the pyramid for a square input, float32 [total, 4] in pixels."""
    shapes = feature_shapes(image_size, strides)
    return np.concatenate(
        [level_anchors(sc, ratios, sh, st) for sc, sh, st in zip(scales, shapes, strides)]
    ).astype(np.float32)


def anchors_for_config(config) -> np.ndarray:
    return generate_anchors(
        config.image_size, config.rpn_anchor_scales, config.rpn_anchor_ratios,
        config.backbone_strides,
    )
