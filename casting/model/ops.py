"""Box, IoU, NMS and ROI Align as pure TensorFlow functions.

Conventions used throughout the model:
- Boxes are (y1, x1, y2, x2) in pixels of the padded model input, continuous coordinates:
  pixel row r covers [r, r + 1), so a mask whose rows are r0..r1 has y1 = r0 and y2 = r1 + 1.
- Deltas are (dy, dx, log(dh), log(dw)) relative to a reference box, divided by a std-dev
  vector (matterport's convention, so its weights keep their meaning).
"""

from __future__ import annotations

import math

import tensorflow as tf

# Largest log-scale change a delta may ask for (a box can grow ~62x): keeps exp() finite.
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)


def box_area(boxes: tf.Tensor) -> tf.Tensor:
    """Area of (..., 4) boxes; degenerate boxes have area 0."""
    h = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    w = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return h * w


def pairwise_iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """IoU between every box of `boxes_a` [..., N, 4] and `boxes_b` [..., M, 4] -> [..., N, M].

    Boxes of zero area (padding) have IoU 0 with everything.
    """
    a = boxes_a[..., :, None, :]
    b = boxes_b[..., None, :, :]
    y1 = tf.maximum(a[..., 0], b[..., 0])
    x1 = tf.maximum(a[..., 1], b[..., 1])
    y2 = tf.minimum(a[..., 2], b[..., 2])
    x2 = tf.minimum(a[..., 3], b[..., 3])
    inter = tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)
    union = box_area(a) + box_area(b) - inter
    return tf.math.divide_no_nan(inter, union)


def encode_boxes(boxes: tf.Tensor, reference: tf.Tensor, std_dev) -> tf.Tensor:
    """Deltas that turn `reference` boxes into `boxes` (both (..., 4)), divided by std_dev."""
    ref_h = reference[..., 2] - reference[..., 0]
    ref_w = reference[..., 3] - reference[..., 1]
    ref_cy = reference[..., 0] + 0.5 * ref_h
    ref_cx = reference[..., 1] + 0.5 * ref_w
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    cy = boxes[..., 0] + 0.5 * h
    cx = boxes[..., 1] + 0.5 * w
    ref_h = tf.maximum(ref_h, 1e-6)
    ref_w = tf.maximum(ref_w, 1e-6)
    dy = (cy - ref_cy) / ref_h
    dx = (cx - ref_cx) / ref_w
    dh = tf.math.log(tf.maximum(h, 1e-6) / ref_h)
    dw = tf.math.log(tf.maximum(w, 1e-6) / ref_w)
    deltas = tf.stack([dy, dx, dh, dw], axis=-1)
    return deltas / tf.constant(std_dev, deltas.dtype)


def decode_boxes(deltas: tf.Tensor, reference: tf.Tensor, std_dev) -> tf.Tensor:
    """Apply (std_dev-scaled) deltas (..., 4) to reference boxes (..., 4)."""
    deltas = deltas * tf.constant(std_dev, deltas.dtype)
    ref_h = reference[..., 2] - reference[..., 0]
    ref_w = reference[..., 3] - reference[..., 1]
    cy = reference[..., 0] + 0.5 * ref_h + deltas[..., 0] * ref_h
    cx = reference[..., 1] + 0.5 * ref_w + deltas[..., 1] * ref_w
    h = ref_h * tf.exp(tf.minimum(deltas[..., 2], BBOX_XFORM_CLIP))
    w = ref_w * tf.exp(tf.minimum(deltas[..., 3], BBOX_XFORM_CLIP))
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def clip_boxes(boxes: tf.Tensor, height, width) -> tf.Tensor:
    """Clip (..., 4) boxes to [0, height] x [0, width]."""
    height = tf.cast(height, boxes.dtype)
    width = tf.cast(width, boxes.dtype)
    y1 = tf.clip_by_value(boxes[..., 0], 0.0, height)
    x1 = tf.clip_by_value(boxes[..., 1], 0.0, width)
    y2 = tf.clip_by_value(boxes[..., 2], 0.0, height)
    x2 = tf.clip_by_value(boxes[..., 3], 0.0, width)
    return tf.stack([y1, x1, y2, x2], axis=-1)


def jitter_boxes(boxes: tf.Tensor, copies: int, spread: float = 0.1,
                 seed: tf.Tensor | None = None) -> tf.Tensor:
    """`copies` randomly moved copies of each box [B, N, 4] -> [B, N * copies, 4] (copy k of
    box n at index k * N + n): the centre shifts by up to `spread` of the box's height and
    width, each side's length scales by a factor in [exp(-spread), exp(spread)]. With the
    default 0.1 a copy keeps IoU >= 0.6 with its box. Zero-area (padding) boxes stay zero."""
    tiled = tf.tile(boxes, [1, copies, 1])
    shape = tf.shape(tiled)
    if seed is None:
        noise = tf.random.uniform(shape, -spread, spread, dtype=boxes.dtype)
    else:
        noise = tf.random.stateless_uniform(shape, seed, -spread, spread, dtype=boxes.dtype)
    # the noise is a delta (dy, dx, log dh, log dw) with unit std-dev
    return decode_boxes(noise, tiled, (1.0, 1.0, 1.0, 1.0))


def smooth_l1(diff: tf.Tensor, beta: float = 1.0) -> tf.Tensor:
    """Elementwise smooth-L1 (Huber with slope 1): 0.5 x^2 / beta below beta, |x| - beta/2 above."""
    abs_diff = tf.abs(diff)
    return tf.where(abs_diff < beta, 0.5 * tf.square(abs_diff) / beta, abs_diff - 0.5 * beta)


def nms_padded(boxes: tf.Tensor, scores: tf.Tensor, max_output: int, iou_threshold: float,
               score_threshold: float = float("-inf")):
    """Greedy NMS on one image's boxes [N, 4] / scores [N].

    Returns (indices [max_output] int32 padded with 0, number of valid indices)."""
    selected = tf.image.non_max_suppression(
        boxes, scores, max_output_size=max_output, iou_threshold=iou_threshold,
        score_threshold=score_threshold,
    )
    valid = tf.shape(selected)[0]
    padded = tf.pad(selected, [[0, max_output - valid]])
    return tf.ensure_shape(padded, [max_output]), valid


def pad_edges(feature: tf.Tensor) -> tf.Tensor:
    """Replicate a map's border cells once on each side ([B, H+2, W+2, C]), so that samples
    between the border and the first cell centre clamp to the border value instead of
    reading crop_and_resize's zero extrapolation."""
    return tf.pad(feature, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")


def roi_align(feature: tf.Tensor, boxes: tf.Tensor, box_indices: tf.Tensor, stride: float,
              output_size: int, sampling_ratio: int = 2) -> tf.Tensor:
    """ROI Align on one feature map [B, H, W, C] for boxes [K, 4] (image pixels) of images
    `box_indices` [K]: each of the output_size^2 bins averages sampling_ratio^2 bilinear samples
    taken at sub-bin centres. Returns [K, output_size, output_size, C]."""
    samples = output_size * sampling_ratio
    # sampled in float32 (crop_and_resize has no bfloat16 kernel; its output is float32)
    padded = pad_edges(tf.cast(feature, tf.float32))
    crop_boxes = aligned_crop_boxes(boxes, stride, tf.shape(padded), samples, offset=1.0)
    crops = tf.image.crop_and_resize(padded, crop_boxes, box_indices, [samples, samples])
    if sampling_ratio > 1:
        crops = tf.nn.avg_pool2d(crops, sampling_ratio, sampling_ratio, "VALID")
    return crops


def aligned_crop_boxes(boxes: tf.Tensor, stride: float, feature_shape, samples: int,
                       offset: float = 0.0) -> tf.Tensor:
    """Normalised crop_and_resize boxes that sample each box at `samples` x `samples` evenly
    spaced bin centres.

    `boxes` are in image pixels; the feature map [B, H, W, C] has the given stride, and feature
    cell j covers image [j * stride, (j + 1) * stride) with its value at the cell centre
    (half-pixel convention). crop_and_resize samples from a box's top edge to its bottom edge
    inclusive, in array-index units normalised by (size - 1), so the box is moved onto the
    first and last bin centres. `offset` is the number of cells of padding the map was given
    on its top and left (see pad_edges); `feature_shape` is the padded map's shape.
    """
    fh = tf.cast(feature_shape[1], boxes.dtype)
    fw = tf.cast(feature_shape[2], boxes.dtype)
    scaled = boxes / stride
    step_y = (scaled[..., 2] - scaled[..., 0]) / samples
    step_x = (scaled[..., 3] - scaled[..., 1]) / samples
    y_first = scaled[..., 0] + 0.5 * step_y - 0.5 + offset
    x_first = scaled[..., 1] + 0.5 * step_x - 0.5 + offset
    y_last = y_first + step_y * (samples - 1)
    x_last = x_first + step_x * (samples - 1)
    return tf.stack([
        y_first / tf.maximum(fh - 1.0, 1.0), x_first / tf.maximum(fw - 1.0, 1.0),
        y_last / tf.maximum(fh - 1.0, 1.0), x_last / tf.maximum(fw - 1.0, 1.0),
    ], axis=-1)


def fpn_levels(boxes: tf.Tensor, min_level: int = 2, max_level: int = 5,
               canonical_size: float = 224.0, canonical_level: int = 4) -> tf.Tensor:
    """Pyramid level for each box (FPN paper eq. 1): floor(4 + log2(sqrt(area) / 224)),
    clamped to [min_level, max_level]. Boxes are in image pixels."""
    size = tf.sqrt(tf.maximum(box_area(boxes), 1e-6))
    level = tf.floor(canonical_level + tf.math.log(size / canonical_size) / math.log(2.0))
    return tf.cast(tf.clip_by_value(level, min_level, max_level), tf.int32)


def multilevel_roi_align(features: list[tf.Tensor], boxes: tf.Tensor, output_size: int,
                         strides=(4, 8, 16, 32), sampling_ratio: int = 2) -> tf.Tensor:
    """ROI Align over a pyramid: each box [B, K, 4] is pooled from the level its size picks.

    `features` are P2..P5 ([B, H_l, W_l, C]). Returns [B, K, output_size, output_size, C].
    """
    batch = tf.shape(boxes)[0]
    num = tf.shape(boxes)[1]
    flat_boxes = tf.reshape(boxes, [-1, 4])
    flat_index = tf.repeat(tf.range(batch), num)
    merged = multilevel_roi_align_flat(features, flat_boxes, flat_index, output_size, strides,
                                       sampling_ratio)
    channels = features[0].shape[-1]
    return tf.reshape(merged, [batch, num, output_size, output_size, channels])


def multilevel_roi_align_flat(features: list[tf.Tensor], boxes: tf.Tensor,
                              box_indices: tf.Tensor, output_size: int,
                              strides=(4, 8, 16, 32), sampling_ratio: int = 2) -> tf.Tensor:
    """ROI Align of a flat list of boxes [K, 4] of images `box_indices` [K] over P2..P5.
    Returns [K, output_size, output_size, C] (K may be 0)."""
    levels = fpn_levels(boxes, 2, 1 + len(features))
    pooled, order = [], []
    for i, (feature, stride) in enumerate(zip(features, strides)):
        idx = tf.where(tf.equal(levels, i + 2))[:, 0]
        pooled.append(roi_align(feature, tf.gather(boxes, idx), tf.gather(box_indices, idx),
                                float(stride), output_size, sampling_ratio))
        order.append(tf.cast(idx, tf.int32))
    merged = tf.dynamic_stitch(order, pooled)
    channels = features[0].shape[-1]
    return tf.reshape(merged, [-1, output_size, output_size, channels])
