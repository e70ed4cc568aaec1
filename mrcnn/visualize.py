"""matterport's `visualize`: draw detections with matplotlib.

`display_instances` draws into a matplotlib figure; without a display (a training container,
CI) matplotlib's Agg backend is used and nothing opens a window: save the figure with
`plt.savefig(...)` or the returned figure's `savefig`.
"""

from __future__ import annotations

import colorsys
import os
import random

import numpy as np

if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
    import matplotlib

    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patches  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402


def random_colors(n, bright=True, seed=None):
    """`n` distinct colours (RGB floats in 0..1), shuffled."""
    brightness = 1.0 if bright else 0.7
    hsv = [(i / max(n, 1), 1, brightness) for i in range(n)]
    colors = [colorsys.hsv_to_rgb(*c) for c in hsv]
    random.Random(seed).shuffle(colors)
    return colors


def apply_mask(image, mask, color, alpha=0.5):
    """Blend `color` into `image` where `mask` is set (returns the image, changed in place)."""
    for c in range(3):
        image[:, :, c] = np.where(
            mask == 1, image[:, :, c] * (1 - alpha) + alpha * color[c] * 255, image[:, :, c]
        )
    return image


def _outline(mask):
    """Points (x, y) along the mask's boundary, for a polygon outline."""
    try:
        from skimage.measure import find_contours
    except ImportError:  # pragma: no cover - scikit-image is a runtime dependency
        return []
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    return [np.fliplr(c) - 1 for c in find_contours(padded, 0.5)]


def display_instances(image, boxes, masks, class_ids, class_names, scores=None, title="",
                      figsize=(16, 16), ax=None, show_mask=True, show_bbox=True, colors=None,
                      captions=None):
    """Draw boxes [N, (y1, x1, y2, x2)], masks [H, W, N], class ids [N] and optional scores
    on `image`. Returns the matplotlib figure (matterport returned nothing)."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    n = boxes.shape[0]
    if not n:
        print("\n*** No instances to display *** \n")
    else:
        assert boxes.shape[0] == np.asarray(masks).shape[-1] == len(class_ids)
    auto_show = False
    if ax is None:
        fig, ax = plt.subplots(1, figsize=figsize)
        auto_show = True
    else:
        fig = ax.figure
    colors = colors or random_colors(n)
    height, width = image.shape[:2]
    ax.set_ylim(height + 10, -10)
    ax.set_xlim(-10, width + 10)
    ax.axis("off")
    ax.set_title(title)
    masked = np.asarray(image).astype(np.float64).copy()
    if masked.ndim == 2:
        masked = np.stack([masked] * 3, axis=-1)
    masked = masked[:, :, :3]
    for i in range(n):
        color = colors[i]
        if not np.any(boxes[i]):
            continue  # padding / empty instance
        y1, x1, y2, x2 = boxes[i]
        if show_bbox:
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2, alpha=0.7,
                                           linestyle="dashed", edgecolor=color, facecolor="none"))
        if captions is None:
            class_id = int(class_ids[i])
            label = class_names[class_id] if class_id < len(class_names) else str(class_id)
            caption = f"{label} {scores[i]:.3f}" if scores is not None else label
        else:
            caption = captions[i]
        ax.text(x1, y1 + 8, caption, color="w", size=11, backgroundcolor="none")
        mask = np.asarray(masks)[:, :, i]
        if show_mask:
            masked = apply_mask(masked, mask, color)
        for verts in _outline(mask.astype(np.uint8)):
            ax.add_patch(Polygon(verts, facecolor="none", edgecolor=color))
    ax.imshow(np.clip(masked, 0, 255).astype(np.uint8))
    if auto_show and plt.get_backend().lower() != "agg":
        plt.show()
    return fig


def display_images(images, titles=None, cols=4, cmap=None, norm=None, interpolation=None):
    """Show a grid of images with optional titles. Returns the figure."""
    titles = titles if titles is not None else [""] * len(images)
    rows = len(images) // cols + 1
    fig = plt.figure(figsize=(14, 14 * rows // cols))
    for i, (image, title) in enumerate(zip(images, titles), start=1):
        ax = fig.add_subplot(rows, cols, i)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        ax.imshow(np.asarray(image).astype(np.uint8), cmap=cmap, norm=norm,
                  interpolation=interpolation)
    if plt.get_backend().lower() != "agg":
        plt.show()
    return fig


def display_top_masks(image, mask, class_ids, class_names, limit=4):
    """The image and the union mask of each of the `limit` most frequent classes."""
    to_display = [image]
    titles = ["H x W={}x{}".format(image.shape[0], image.shape[1])]
    unique = np.unique(class_ids)
    area = [np.sum(mask[:, :, np.where(class_ids == i)[0]]) for i in unique]
    top = [v[0] for v in sorted(zip(unique, area), key=lambda r: r[1], reverse=True) if v[1] > 0]
    for i in range(limit):
        class_id = top[i] if i < len(top) else -1
        m = mask[:, :, np.where(class_ids == class_id)[0]]
        m = np.sum(m * np.arange(1, m.shape[-1] + 1), -1) if m.shape[-1] else np.zeros(image.shape[:2])
        to_display.append(m)
        titles.append(class_names[class_id] if class_id != -1 else "-")
    return display_images(to_display, titles=titles, cols=limit + 1, cmap="Blues_r")


# matterport's inspection plots, kept in mrcnn/_plots.py (imported last: it uses the above)
from mrcnn._plots import (  # noqa: E402
    display_differences, display_table, display_weight_stats, draw_box, draw_boxes, draw_rois,
    plot_overlaps, plot_precision_recall,
)

__all__ = [
    "random_colors", "apply_mask", "display_instances", "display_images", "display_top_masks",
    "display_differences", "display_table", "display_weight_stats", "draw_box", "draw_boxes",
    "draw_rois", "plot_overlaps", "plot_precision_recall",
]
