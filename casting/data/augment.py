"""In-graph augmentation (plain TensorFlow ops, no NumPy/imgaug), seeded per example.

Geometric transforms move the image and its masks together; boxes are recomputed from the
masks afterwards by the pipeline, so they cannot drift from the masks. Photometric
transforms touch the image only. All randomness is stateless (`tf.random.stateless_*`), so
an example's augmentation depends only on its seed and runs safely in a parallel map.

Applied, each independently: horizontal flip (p 0.5), vertical flip (p 0.5), a rotation by
k*90 degrees (k uniform in 0..3), a small affine (p 0.5: rotation +-10 deg, scale 0.9-1.1,
shift +-4 %), brightness (+-20 grey levels) and contrast (x0.8-1.2), Gaussian blur (p 0.3,
sigma 0.3-1.2) and Gaussian noise (p 0.3, sigma up to 5).
"""

from __future__ import annotations

import math

import tensorflow as tf


def _u(seed, lo=0.0, hi=1.0, shape=()):
    return tf.random.stateless_uniform(shape, seed=seed, minval=lo, maxval=hi)


def _affine_matrix(seed, h, w, max_angle_deg=10.0, scale_range=(0.9, 1.1), max_shift=0.04):
    """Output->input projective transform (8 params) rotating/scaling about the centre."""
    s = tf.random.experimental.stateless_split(seed, 4)
    angle = _u(s[0], -max_angle_deg, max_angle_deg) * (math.pi / 180.0)
    scale = _u(s[1], *scale_range)
    ty = _u(s[2], -max_shift, max_shift) * h
    tx = _u(s[3], -max_shift, max_shift) * w
    cy, cx = (h - 1.0) / 2.0, (w - 1.0) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # input = R^-1/scale (output - centre - shift) + centre
    a0, a1 = cos, sin
    b0, b1 = -sin, cos
    ox, oy = cx + tx, cy + ty
    a2 = cx - a0 * ox - a1 * oy
    b2 = cy - b0 * ox - b1 * oy
    return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])


def _transform(x, matrix, interpolation, fill_mode):
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=matrix[None], output_shape=tf.shape(x)[:2],
        fill_value=0.0, interpolation=interpolation, fill_mode=fill_mode)
    return out[0]


def _blur(image, sigma):
    radius = 3
    xs = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * tf.square(xs / sigma))
    k = k / tf.reduce_sum(k)
    kh = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1])
    kv = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1])
    x = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "SYMMETRIC")
    x = tf.nn.depthwise_conv2d(x, kh, [1, 1, 1, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, kv, [1, 1, 1, 1], "VALID")
    return x[0]


def augment(image, masks, seed):
    """image float32 [h, w, 3] (0..255), masks float32 [h, w, K] (0/1), seed int32/int64 [2].

    Returns the augmented (image, masks); rotations by 90 degrees swap h and w. Masks stay
    binary (nearest-neighbour sampling, zero fill outside).
    """
    seed = tf.cast(seed, tf.int64)
    s = tf.random.experimental.stateless_split(seed, 12)

    image = tf.cond(_u(s[0]) < 0.5, lambda: tf.reverse(image, [1]), lambda: image)
    masks = tf.cond(_u(s[0]) < 0.5, lambda: tf.reverse(masks, [1]), lambda: masks)
    image = tf.cond(_u(s[1]) < 0.5, lambda: tf.reverse(image, [0]), lambda: image)
    masks = tf.cond(_u(s[1]) < 0.5, lambda: tf.reverse(masks, [0]), lambda: masks)
    k = tf.random.stateless_uniform((), seed=s[2], minval=0, maxval=4, dtype=tf.int32)
    image = tf.image.rot90(image, k)
    masks = tf.image.rot90(masks, k)

    def affine():
        shape = tf.cast(tf.shape(image), tf.float32)
        m = _affine_matrix(s[3], shape[0], shape[1])
        return (_transform(image, m, "BILINEAR", "NEAREST"),
                _transform(masks, m, "NEAREST", "CONSTANT"))

    image, masks = tf.cond(_u(s[4]) < 0.5, affine, lambda: (image, masks))

    # Photometric: image only.
    image = image + _u(s[5], -20.0, 20.0)
    mean = tf.reduce_mean(image)
    image = (image - mean) * _u(s[6], 0.8, 1.2) + mean
    image = tf.cond(_u(s[7]) < 0.3, lambda: _blur(image, _u(s[8], 0.3, 1.2)), lambda: image)
    image = tf.cond(
        _u(s[9]) < 0.3,
        lambda: image + tf.random.stateless_normal(tf.shape(image), s[10]) * _u(s[11], 0.0, 5.0),
        lambda: image)
    return tf.clip_by_value(image, 0.0, 255.0), masks


def jittered_size(size: int, scale_range, seed) -> tf.Tensor:
    """Scale jitter: round(size x s), s uniform in scale_range (stateless in `seed`), as the
    longer side an image is resized to before augmentation and cropping."""
    lo, hi = (float(v) for v in scale_range)
    s = _u(tf.cast(seed, tf.int64), lo, hi)
    return tf.maximum(1, tf.cast(tf.round(tf.cast(size, tf.float32) * s), tf.int32))


def mask_boxes(masks):
    """Boxes (y1, x1, y2, x2) int32 [K, 4], far ends exclusive, of masks [H, W, K] bool (an
    empty mask gives a meaningless box: callers drop those by area)."""
    rows = tf.cast(tf.reduce_any(masks, axis=1), tf.int32)  # [H, K]
    cols = tf.cast(tf.reduce_any(masks, axis=0), tf.int32)  # [W, K]
    y1 = tf.argmax(rows, axis=0, output_type=tf.int32)
    y2 = tf.shape(masks)[0] - tf.argmax(tf.reverse(rows, [0]), axis=0, output_type=tf.int32)
    x1 = tf.argmax(cols, axis=0, output_type=tf.int32)
    x2 = tf.shape(masks)[1] - tf.argmax(tf.reverse(cols, [0]), axis=0, output_type=tf.int32)
    return tf.stack([y1, x1, y2, x2], axis=1)


def _offset_over(lo, hi, window, length, u):
    """A window start that keeps [lo, hi) inside the window (or the window inside it, when
    it is longer), at a place set by u in [0, 1), within [0, length - window]."""
    a, b = tf.minimum(lo, hi - window), tf.maximum(lo, hi - window)
    start = a + tf.cast(u * tf.cast(b - a + 1, tf.float32), tf.int32)
    return tf.clip_by_value(tf.minimum(start, b), 0, length - window)


def random_crop(image, masks, crop: int, seed, object_fraction: float = 0.0,
                min_visible: float = 0.0):
    """A crop x crop window of image [h, w, 3] and masks [h, w, K] (float 0/1) at a random
    place (each side kept whole where it is shorter than `crop`).

    With probability `object_fraction` the window holds the box of an instance drawn
    uniformly from those present, whole where it fits (at a random place in the window),
    else the window is placed uniformly, so some crops hold no object. An instance the window cuts keeps its visible
    part when that is at least `min_visible` of its area before the crop; below, its mask
    is emptied (its pixels stay, unlabelled) and the pipeline drops it with those left with
    no pixel."""
    seed = tf.cast(seed, tf.int64)
    s = tf.random.experimental.stateless_split(seed, 2)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    ch, cw = tf.minimum(h, crop), tf.minimum(w, crop)
    oy = tf.random.stateless_uniform((), seed=s[0], minval=0, maxval=h - ch + 1, dtype=tf.int32)
    ox = tf.random.stateless_uniform((), seed=s[1], minval=0, maxval=w - cw + 1, dtype=tf.int32)
    areas = tf.reduce_sum(masks, axis=[0, 1])  # [K]
    if object_fraction > 0.0:
        extra = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(seed, 1), 2)
        present = areas > 0.0
        pick = tf.argmax(tf.where(present, _u(extra[0], shape=tf.shape(areas)), -1.0),
                         output_type=tf.int32)
        y1, x1, y2, x2 = tf.unstack(tf.gather(mask_boxes(masks > 0.5), pick))
        u = _u(extra[1], shape=[3])
        oy_obj = _offset_over(y1, y2, ch, h, u[0])
        ox_obj = _offset_over(x1, x2, cw, w, u[1])
        use = tf.logical_and(u[2] < object_fraction, tf.reduce_any(present))
        oy, ox = tf.where(use, oy_obj, oy), tf.where(use, ox_obj, ox)
    image, masks = image[oy:oy + ch, ox:ox + cw], masks[oy:oy + ch, ox:ox + cw]
    if min_visible > 0.0:
        visible = tf.reduce_sum(masks, axis=[0, 1])
        keep = visible >= min_visible * areas
        masks = masks * tf.cast(keep, masks.dtype)
    return image, masks
