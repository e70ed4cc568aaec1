"""Resizing images into the model's square input and mapping results back.

Training and inference resize the same way: scale = S / max(h, w) keeps the aspect ratio, the
resized image sits in the top-left corner and the rest is zero padding. A box in model pixels
divided by `scale` is a box in original pixels.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def resized_shape(height, width, size: int):
    """(new_height, new_width, scale) for an image fitted into a size x size square."""
    scale = size / max(height, width)
    return (max(1, min(size, int(round(height * scale)))),
            max(1, min(size, int(round(width * scale)))), scale)


def resize_and_pad_tf(image: tf.Tensor, size: int):
    """In-graph: image [H, W, 3] (any dtype) -> (float32 [size, size, 3], scale float32)."""
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float32)
    w = tf.cast(shape[1], tf.float32)
    scale = size / tf.maximum(h, w)
    new_h = tf.clip_by_value(tf.cast(tf.round(h * scale), tf.int32), 1, size)
    new_w = tf.clip_by_value(tf.cast(tf.round(w * scale), tf.int32), 1, size)
    resized = tf.image.resize(tf.cast(image, tf.float32), [new_h, new_w], method="bilinear",
                              antialias=True)
    padded = tf.image.pad_to_bounding_box(resized, 0, 0, size, size)
    return tf.ensure_shape(padded, [size, size, 3]), scale


def to_rgb(image) -> np.ndarray:
    """Any HxW, HxWx1, HxWx3 or HxWx4 array -> HxWx3 (alpha dropped, grey repeated)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape HxW or HxWxC, got {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    elif image.shape[-1] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got {image.shape[-1]}")
    return image


def resize_and_pad(image, size: int):
    """NumPy in, NumPy out: (float32 [size, size, 3], scale)."""
    padded, scale = resize_and_pad_tf(tf.convert_to_tensor(to_rgb(image)), size)
    return padded.numpy(), float(scale.numpy())


def paste_masks(masks: np.ndarray, boxes: np.ndarray, height: int, width: int,
                threshold: float = 0.5) -> np.ndarray:
    """Paste box-relative soft masks [K, m, m] into full images: boxes [K, 4] (y1, x1, y2, x2)
    in the target image's pixels -> bool [K, height, width].

    Each output pixel whose centre lies in a box samples the box's mask bilinearly at that
    centre (the mask's cell centres sit at (i + 0.5) / m of the box)."""
    num = len(masks)
    out = np.zeros((num, height, width), dtype=bool)
    if num == 0:
        return out
    m = masks.shape[1]
    for k in range(num):
        y1, x1, y2, x2 = (float(v) for v in boxes[k])
        if y2 - y1 <= 0 or x2 - x1 <= 0:
            continue
        r0, r1 = max(0, int(np.floor(y1))), min(height, int(np.ceil(y2)))
        c0, c1 = max(0, int(np.floor(x1))), min(width, int(np.ceil(x2)))
        if r1 <= r0 or c1 <= c0:
            continue
        ys = ((np.arange(r0, r1) + 0.5 - y1) / (y2 - y1)) * m - 0.5
        xs = ((np.arange(c0, c1) + 0.5 - x1) / (x2 - x1)) * m - 0.5
        inside_y = (np.arange(r0, r1) + 0.5 >= y1) & (np.arange(r0, r1) + 0.5 <= y2)
        inside_x = (np.arange(c0, c1) + 0.5 >= x1) & (np.arange(c0, c1) + 0.5 <= x2)
        ys = np.clip(ys, 0, m - 1)
        xs = np.clip(xs, 0, m - 1)
        y0 = np.floor(ys).astype(int)
        x0 = np.floor(xs).astype(int)
        y1i = np.minimum(y0 + 1, m - 1)
        x1i = np.minimum(x0 + 1, m - 1)
        wy = (ys - y0)[:, None]
        wx = (xs - x0)[None, :]
        mk = masks[k]
        top = mk[y0][:, x0] * (1 - wx) + mk[y0][:, x1i] * wx
        bottom = mk[y1i][:, x0] * (1 - wx) + mk[y1i][:, x1i] * wx
        values = top * (1 - wy) + bottom * wy
        region = (values >= threshold) & inside_y[:, None] & inside_x[None, :]
        out[k, r0:r1, c0:c1] = region
    return out
