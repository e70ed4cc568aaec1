"""matterport's box, mask and anchor helpers of `mrcnn.utils` (re-exported there).

Normalised boxes follow matterport: (y1, x1, y2, x2) divided by (h - 1, w - 1) after y2 and
x2 are shifted by one, so that a box covering the whole image is (0, 0, 1, 1). Pixel boxes
have y2 / x2 exclusive. Anchors come from the model's own generator
(`casting.model.anchors.level_anchors`), so they are the anchors the RPN scores.
"""

from __future__ import annotations

import numpy as np

# ------------------------------------------------------------------------------------------
# Normalised coordinates
# ------------------------------------------------------------------------------------------
_SHIFT = np.array([0, 0, 1, 1], np.float64)


def _scale(shape) -> np.ndarray:
    h, w = (float(v) for v in tuple(shape)[:2])
    return np.array([h - 1, w - 1, h - 1, w - 1], np.float64)


def norm_boxes(boxes, shape) -> np.ndarray:
    """Pixel boxes [N, (y1, x1, y2, x2)] of an image of `shape` (h, w) -> normalised float32."""
    boxes = np.asarray(boxes, np.float64)
    return ((boxes - _SHIFT) / _scale(shape)).astype(np.float32)


def denorm_boxes(boxes, shape) -> np.ndarray:
    """Normalised boxes -> pixel boxes of an image of `shape` (h, w), rounded to int32."""
    boxes = np.asarray(boxes, np.float64)
    return np.around(boxes * _scale(shape) + _SHIFT).astype(np.int32)


def denorm_boxes_float(boxes, shape) -> np.ndarray:
    """`denorm_boxes` without the rounding (float64), for sub-pixel work."""
    return np.asarray(boxes, np.float64) * _scale(shape) + _SHIFT


# ------------------------------------------------------------------------------------------
# Masks: full size <-> box-relative
# ------------------------------------------------------------------------------------------
def resize(image, output_shape, order=1, mode="constant", cval=0, clip=True,
           preserve_range=False, anti_aliasing=False, anti_aliasing_sigma=None):
    """scikit-image's `resize` with matterport's defaults (no anti-aliasing)."""
    from skimage.transform import resize as sk_resize

    return sk_resize(image, output_shape, order=order, mode=mode, cval=cval, clip=clip,
                     preserve_range=preserve_range, anti_aliasing=anti_aliasing,
                     anti_aliasing_sigma=anti_aliasing_sigma)


def _box(bbox):
    y1, x1, y2, x2 = (int(round(float(v))) for v in np.asarray(bbox).reshape(-1)[:4])
    return y1, x1, y2, x2


def minimize_mask(bbox, mask, mini_shape):
    """Full-size masks [H, W, N] -> each cropped to its box `bbox[i]` and resized to
    `mini_shape` (bool [h, w, N]), matterport's memory-saving mini masks."""
    mask = np.asarray(mask)
    mini = np.zeros(tuple(mini_shape) + (mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = _box(bbox[i])
        crop = mask[y1:y2, x1:x2, i].astype(np.float32)
        if crop.size == 0:
            raise ValueError(f"minimize_mask: box {i} ({y1}, {x1}, {y2}, {x2}) has zero area")
        mini[:, :, i] = np.around(resize(crop, mini_shape)) >= 1
    return mini


def expand_mask(bbox, mini_mask, image_shape):
    """Mini masks [h, w, N] -> full-size bool masks [H, W, N], each pasted into its box
    (the inverse of `minimize_mask`)."""
    mini_mask = np.asarray(mini_mask)
    n = mini_mask.shape[-1]
    out = np.zeros(tuple(image_shape)[:2] + (n,), dtype=bool)
    for i in range(n):
        out[:, :, i] = unmold_mask(mini_mask[:, :, i].astype(np.float32), bbox[i], image_shape)
    return out


def mold_mask(mask, config, bbox=None):
    """A full-size mask [H, W] -> the box-relative target the mask head learns for `bbox`
    (default: the mask's own box): float32 {0, 1} [MASK_SHAPE]. The same sampling as the
    model's training targets (`casting.model.roi_heads.mask_targets_flat`). matterport left
    this function empty."""
    import tensorflow as tf

    from casting.model.roi_heads import mask_targets_flat

    mask = np.asarray(mask).astype(np.uint8)
    if bbox is None:
        rows, cols = np.where(mask.any(axis=1))[0], np.where(mask.any(axis=0))[0]
        if not rows.size:
            raise ValueError("mold_mask: the mask is empty and no bbox was given")
        bbox = [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]
    size = int(np.asarray(getattr(config, "MASK_SHAPE", 28)).reshape(-1)[0])
    out = mask_targets_flat(tf.constant(mask[None, None]), tf.constant([bbox], tf.float32),
                            tf.zeros([1], tf.int32), tf.zeros([1], tf.int32), size)
    return out.numpy()[0]


def unmold_mask(mask, bbox, image_shape):
    """A box-relative soft mask [h, w] (values 0..1) -> a full-size bool mask [H, W]: resized
    into `bbox` (y1, x1, y2, x2, pixels) and thresholded at 0.5. The model's own paste
    (`casting.model.transform.paste_masks`): bilinear, sampled at pixel centres."""
    from casting.model.transform import paste_masks

    mask = np.asarray(mask, np.float32)
    if mask.shape[0] != mask.shape[1]:  # paste_masks samples square masks
        side = max(mask.shape[:2])
        mask = resize(mask, (side, side)).astype(np.float32)
    height, width = (int(v) for v in tuple(image_shape)[:2])
    box = np.asarray(bbox, np.float32).reshape(1, -1)[:, :4]
    return paste_masks(mask[None], box, height, width, threshold=0.5)[0]


# ------------------------------------------------------------------------------------------
# Anchors
# ------------------------------------------------------------------------------------------
def generate_anchors(scales, ratios, shape, feature_stride, anchor_stride=1):
    """Anchors (y1, x1, y2, x2, pixels) of one pyramid level with a feature map of `shape`:
    every combination of `scales` (box side) and `ratios` (width / height) at every
    `anchor_stride`-th feature cell. Order: cells row-major, then ratios, then scales.

    Centres sit at the middle of each feature cell, ((i + 0.5) * stride), where the model
    puts them (matterport put them at the cell's top-left corner, i * stride)."""
    from casting.model.anchors import level_anchors

    scales = np.asarray(scales, np.float64).reshape(-1)
    ratios = np.asarray(ratios, np.float64).reshape(-1)
    ratio_grid, scale_grid = np.meshgrid(ratios, scales, indexing="ij")
    flat_scales, flat_ratios = scale_grid.reshape(-1), ratio_grid.reshape(-1)
    shape = (int(shape[0]), int(shape[1]))
    boxes = level_anchors(flat_scales, flat_ratios, shape, feature_stride)
    boxes = boxes.reshape(shape[0], shape[1], len(flat_scales), 4)
    step = int(anchor_stride)
    return boxes[::step, ::step].reshape(-1, 4).astype(np.float32)


def generate_pyramid_anchors(scales, ratios, feature_shapes, feature_strides, anchor_stride=1):
    """Anchors of every level, concatenated (level `i` has side `scales[i]`): pixel
    coordinates, in the order of the RPN's outputs."""
    return np.concatenate([
        generate_anchors(scales[i], ratios, feature_shapes[i], feature_strides[i], anchor_stride)
        for i in range(len(scales))
    ], axis=0)


# ------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------
def batch_slice(inputs, graph_fn, batch_size, names=None):
    """Run `graph_fn` on each item of a batch and stack the results.

    inputs: a list of tensors / arrays whose first dimension is the batch; graph_fn gets one
    slice of each and returns a tensor or a list of them. Returns the stacked outputs (one
    tensor, or a list), TensorFlow tensors if any output is one, else NumPy arrays."""
    import tensorflow as tf

    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    outputs = []
    for i in range(int(batch_size)):
        result = graph_fn(*[x[i] for x in inputs])
        outputs.append(list(result) if isinstance(result, (list, tuple)) else [result])
    columns = list(zip(*outputs))
    names = list(names) if names is not None else [None] * len(columns)
    stacked = []
    for column, name in zip(columns, names):
        if any(tf.is_tensor(c) for c in column):
            stacked.append(tf.stack(column, axis=0, name=name))
        else:
            stacked.append(np.stack(column, axis=0))
    return stacked[0] if len(stacked) == 1 else stacked


def box_refinement_graph(box, gt_box):
    """In-graph `box_refinement`: deltas (dy, dx, log dh, log dw) from `box` to `gt_box`."""
    import tensorflow as tf

    from casting.model.ops import encode_boxes

    return encode_boxes(tf.cast(gt_box, tf.float32), tf.cast(box, tf.float32), [1.0] * 4)
