"""Detections drawn over an image: translucent masks, box outlines and "class score" labels.

Pure numpy + PIL. ``draw_detections`` returns a new uint8 HxWx3 array (the input is not
modified); ``to_png_bytes`` / ``save_png`` encode it. Each class keeps one colour across
images (a fixed palette indexed by class id), so overlays from different runs compare.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from casting.files import write_atomic
from casting.masks import mask_to_yxyx

__all__ = ["PALETTE", "class_color", "draw_detections", "draw_verdict", "to_png_bytes",
           "save_png"]

# Distinct, saturated colours (RGB); class id i uses PALETTE[(i - 1) % len(PALETTE)].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)


def class_color(class_id: int) -> tuple[int, int, int]:
    return PALETTE[(max(int(class_id), 1) - 1) % len(PALETTE)]


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any HxW, HxWx1, HxWx3 or HxWx4 array -> a new RGB uint8 HxWx3 array (grey repeated,
    alpha dropped, other dtypes rounded and clipped to 0..255). ValueError for other shapes."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] < 1 \
            or image.shape[1] < 1:
        raise ValueError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4, got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[..., :3]
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.array(image, copy=True)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow without sized default font
        return ImageFont.load_default()


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
    class_ids: Sequence[int] | np.ndarray | None = None,
    scores: Sequence[float] | np.ndarray | None = None,
    masks: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    *,
    box_format: str = "xyxy",
    mask_alpha: float = 0.45,
    line_width: int | None = None,
    show_labels: bool = True,
) -> np.ndarray:
    """Draw K detections over ``image`` and return a new uint8 HxWx3 array.

    boxes: [K, 4] in original pixels, ``box_format`` "xyxy" (x1, y1, x2, y2) or "yxyx"
    (the model's y1, x1, y2, x2); far edges exclusive. class_ids: 1-based. masks: [K, H, W]
    booleans. Any of boxes / masks may be None; K comes from whichever is given.
    """
    out = as_rgb_uint8(image)
    height, width = out.shape[:2]
    boxes_arr, masks_arr, ids, score_list = _checked_detections(
        boxes, class_ids, scores, masks, box_format, height, width
    )
    if not ids:
        return out
    if masks_arr is not None:
        out = _blend_masks(out, masks_arr, ids, mask_alpha)

    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    lw = line_width or max(1, round(min(height, width) / 300))
    font = _font(max(10, min(24, round(min(height, width) / 40))))
    for k, class_id in enumerate(ids):
        if boxes_arr is not None:
            x1, y1, x2, y2 = boxes_arr[k]
        elif masks_arr[k].any():
            y1, x1, y2, x2 = mask_to_yxyx(masks_arr[k])
        else:
            continue
        x1 = float(np.clip(x1, 0, width - 1))
        y1 = float(np.clip(y1, 0, height - 1))
        x2 = float(np.clip(x2 - 1, x1, width - 1))
        y2 = float(np.clip(y2 - 1, y1, height - 1))
        color = class_color(class_id)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=lw)
        if show_labels:
            name = (
                class_names[class_id - 1]
                if class_names is not None and 1 <= class_id <= len(class_names)
                else str(class_id)
            )
            label = name if score_list is None else f"{name} {score_list[k]:.2f}"
            _draw_label(draw, label, (x1, y1), color, font, lw, (width, height))
    return np.asarray(pil, dtype=np.uint8).copy()


ACCEPT_COLOR, REJECT_COLOR = (30, 150, 60), (200, 30, 30)


def draw_verdict(image: np.ndarray, verdict) -> np.ndarray:
    """A banner across the top of ``image``: green ``ACCEPT`` or red ``REJECT: reasons``
    (``verdict`` is a casting.qc.Verdict); returns a new uint8 HxWx3 array."""
    out = as_rgb_uint8(image)
    height, width = out.shape[:2]
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    font = _font(max(10, min(24, round(min(height, width) / 32))))
    text = verdict.summary()
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    while len(text) > 8 and x1 - x0 + 8 > width:  # shorten a long list of reasons
        text = text[: max(8, int(len(text) * (width - 8) / (x1 - x0 + 8)) - 1)].rstrip() + "~"
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    band = min(height, y1 - y0 + 8)
    draw.rectangle([0, 0, width - 1, band - 1],
                   fill=REJECT_COLOR if verdict.rejected else ACCEPT_COLOR)
    draw.text((4 - x0, 4 - y0), text, fill=(255, 255, 255), font=font)
    return np.asarray(pil, dtype=np.uint8).copy()


def _checked_detections(boxes, class_ids, scores, masks, box_format, height, width):
    """draw_detections' inputs as arrays and lists of one length K (boxes as xyxy),
    or a ValueError that says which input disagrees."""
    boxes_arr = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if boxes_arr is not None and box_format == "yxyx":
        boxes_arr = boxes_arr[:, [1, 0, 3, 2]]
    elif boxes_arr is not None and box_format != "xyxy":
        raise ValueError(f"box_format must be 'xyxy' or 'yxyx', not {box_format!r}")
    masks_arr = None if masks is None else np.asarray(masks).astype(bool, copy=False)
    if masks_arr is not None and (masks_arr.ndim != 3 or masks_arr.shape[1:] != (height, width)):
        raise ValueError(
            f"masks must be [K, {height}, {width}] for this image, got {masks_arr.shape}"
        )
    count = (
        len(boxes_arr) if boxes_arr is not None else (len(masks_arr) if masks_arr is not None else 0)
    )
    if boxes_arr is not None and masks_arr is not None and len(masks_arr) != count:
        raise ValueError(f"{count} boxes but {len(masks_arr)} masks")
    ids = [1] * count if class_ids is None else [int(c) for c in np.asarray(class_ids).reshape(-1)]
    if len(ids) != count:
        raise ValueError(f"{count} detections but {len(ids)} class ids")
    score_list = None if scores is None else [float(s) for s in np.asarray(scores).reshape(-1)]
    if score_list is not None and len(score_list) != count:
        raise ValueError(f"{count} detections but {len(score_list)} scores")
    return boxes_arr, masks_arr, ids, score_list


def _draw_label(draw, label, corner, color, font, lw, size):
    """The label on a filled tab above the box's top-left corner (below it when the box
    touches the top), kept inside the image."""
    (x1, y1), (width, height) = corner, size
    tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), label, font=font)
    tw, th = tx1 - tx0 + 4, ty1 - ty0 + 4
    lx = min(max(0.0, x1), max(0.0, width - tw))
    ly = y1 - th if y1 - th >= 0 else min(y1 + lw, max(0.0, height - th))
    draw.rectangle([lx, ly, lx + tw, ly + th], fill=color)
    text_color = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
    draw.text((lx + 2 - tx0, ly + 2 - ty0), label, fill=text_color, font=font)


def _blend_masks(out: np.ndarray, masks: np.ndarray, ids: list[int], alpha: float) -> np.ndarray:
    """Blend each instance's colour into its pixels (largest first so small ones stay
    visible on top), then darken the mask outline for contrast."""
    work = out.astype(np.float32)
    for k in np.argsort([-int(m.sum()) for m in masks]):
        m = masks[k]
        if not m.any():
            continue
        color = np.array(class_color(ids[k]), dtype=np.float32)
        work[m] = work[m] * (1.0 - alpha) + color * alpha
        work[m & ~_erode(m)] = color * 0.6
    return np.clip(np.rint(work), 0, 255).astype(np.uint8)


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion (pixels outside the image count as background)."""
    p = np.pad(mask, 1, mode="constant")
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def to_png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(as_rgb_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a PNG atomically (casting.files.write_atomic)."""
    write_atomic(path, to_png_bytes(image))


def write_overlays(kept, class_names, out_dir, min_score: float) -> list[str]:
    """PNGs `<out_dir>/<image stem>.png` of evaluated images `kept` ((record, image,
    detections) triples, as casting.evaluation.evaluate_model keeps them) with the
    detections a deployed model would return (score above `min_score`). Returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for rec, image, det in kept:
        keep = np.flatnonzero(np.asarray(det["scores"]) > min_score)
        det = {k: np.asarray(det[k])[keep] for k in ("boxes", "class_ids", "scores", "masks")}
        drawn = draw_detections(image, boxes=det["boxes"], class_ids=det["class_ids"],
                                scores=det["scores"], masks=det["masks"],
                                class_names=class_names, box_format="yxyx")
        stem = os.path.splitext(os.path.basename(rec.image_id))[0]
        path = os.path.join(out_dir, f"{stem}.png")
        save_png(drawn, path)
        written.append(path)
    return written
