"""The second stage: box head, mask head, ROI sampling with targets, and detection output.

Layer names follow matterport (`mrcnn_class_conv1`, `mrcnn_class_bn1`, ..., `mrcnn_mask`).
`mrcnn_class_conv1` is a 7x7 valid convolution on the 7x7 pooled features: a fully connected
layer in disguise, kept in that form so matterport's kernels load unchanged.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from casting.model import ops
from casting.model.backbone import norm_layer
from casting.model.rpn import random_subset, sub_seed

PYRAMID_STRIDES = (4, 8, 16, 32)


class BoxHead(keras.layers.Layer):
    """Pooled ROI features [B, K, P, P, C] -> class logits [B, K, N], deltas [B, K, N, 4]."""

    def __init__(self, num_classes: int, fc_size: int = 1024, pool_size: int = 7,
                 train_bn: bool = False, norm: str = "batch", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.pool_size = pool_size
        self.conv1 = layers.Conv2D(fc_size, pool_size, padding="valid", name="mrcnn_class_conv1")
        self.bn1 = norm_layer("mrcnn_class_bn1", norm, train_bn)
        self.conv2 = layers.Conv2D(fc_size, 1, name="mrcnn_class_conv2")
        self.bn2 = norm_layer("mrcnn_class_bn2", norm, train_bn)
        self.logits = layers.Dense(num_classes, name="mrcnn_class_logits",
                                   kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.bbox = layers.Dense(4 * num_classes, name="mrcnn_bbox_fc",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))

    def build(self, input_shape):
        channels = input_shape[-1]
        p = self.pool_size
        self.conv1.build((None, p, p, channels))
        self.bn1.build((None, 1, 1, self.conv1.filters))
        self.conv2.build((None, 1, 1, self.conv1.filters))
        self.bn2.build((None, 1, 1, self.conv2.filters))
        self.logits.build((None, self.conv2.filters))
        self.bbox.build((None, self.conv2.filters))

    def call(self, pooled, training=False):
        batch, num = tf.shape(pooled)[0], tf.shape(pooled)[1]
        p, fc = self.pool_size, self.conv1.filters
        # conv1 (PxP "valid" on a PxP input) and conv2 (1x1) are fully connected layers:
        # run them as matrix products with the same kernels (row order (y, x, channel)
        # matches the flattened input), 2.5x faster on CPU than the convolutions.
        # (in the layers' compute dtype: float16 / bfloat16 under mixed precision)
        dtype = self.conv1.compute_dtype
        x = tf.reshape(tf.cast(pooled, dtype), [-1, p * p * pooled.shape[-1]])
        x = tf.matmul(x, tf.reshape(tf.cast(self.conv1.kernel, dtype), [-1, fc]))
        x = x + tf.cast(self.conv1.bias, dtype)
        x = tf.nn.relu(self.bn1(tf.reshape(x, [-1, 1, 1, fc]), training=training))
        x = tf.matmul(tf.reshape(x, [-1, fc]),
                      tf.reshape(tf.cast(self.conv2.kernel, dtype), [fc, -1]))
        x = x + tf.cast(self.conv2.bias, dtype)
        x = tf.nn.relu(self.bn2(tf.reshape(x, [-1, 1, 1, self.conv2.filters]),
                                training=training))
        x = tf.reshape(x, [-1, self.conv2.filters])
        logits = tf.reshape(self.logits(x), [batch, num, self.num_classes])
        deltas = tf.reshape(self.bbox(x), [batch, num, self.num_classes, 4])
        # float32 for the softmax, the losses and box decoding under mixed precision
        return tf.cast(logits, tf.float32), tf.cast(deltas, tf.float32)


class MaskHead(keras.layers.Layer):
    """Pooled ROI features [B, K, M, M, C] -> mask logits [B, K, 2M, 2M, N]."""

    def __init__(self, num_classes: int, channels: int = 256, pool_size: int = 14,
                 train_bn: bool = False, norm: str = "batch", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.pool_size = pool_size
        self.convs = [layers.Conv2D(channels, 3, padding="same", name=f"mrcnn_mask_conv{i}")
                      for i in range(1, 5)]
        self.bns = [norm_layer(f"mrcnn_mask_bn{i}", norm, train_bn) for i in range(1, 5)]
        self.deconv = layers.Conv2DTranspose(channels, 2, strides=2, activation="relu",
                                             name="mrcnn_mask_deconv")
        self.mask = layers.Conv2D(num_classes, 1, name="mrcnn_mask")

    def build(self, input_shape):
        m = self.pool_size
        shape = (None, m, m, input_shape[-1])
        for conv, bn in zip(self.convs, self.bns):
            conv.build(shape)
            shape = (None, m, m, conv.filters)
            bn.build(shape)
        self.deconv.build(shape)
        self.mask.build((None, 2 * m, 2 * m, self.deconv.filters))

    def call(self, pooled, training=False):
        batch, num = tf.shape(pooled)[0], tf.shape(pooled)[1]
        m = self.pool_size
        x = tf.reshape(pooled, [-1, m, m, pooled.shape[-1]])
        for conv, bn in zip(self.convs, self.bns):
            x = tf.nn.relu(bn(conv(x), training=training))
        x = tf.cast(self.mask(self.deconv(x)), tf.float32)  # the sigmoid and loss in float32
        return tf.reshape(x, [batch, num, 2 * m, 2 * m, self.num_classes])


def sample_rois(proposals: tf.Tensor, gt_boxes: tf.Tensor, gt_class_ids: tf.Tensor, config,
                seed: tf.Tensor | None = None):
    """Choose the ROIs the heads train on, with their targets.

    The ground-truth boxes join the proposals as candidates, with `roi_gt_jitter` moved
    copies of each (`ops.jitter_boxes`; those below IoU 0.5 become negatives). The first
    P = round(train_rois_per_image * roi_positive_ratio) slots hold positives (IoU >= 0.5 with
    a ground truth), the rest negatives; slots left empty are marked invalid.

    Returns a dict: rois [B, T, 4], class_ids [B, T] (0 for negatives), deltas [B, T, 4]
    (std-scaled, to the matched box), gt_index [B, T] (matched ground truth), valid [B, T],
    positive [B, T]; the positive slots are the first `num_positive_slots(config)`.
    """
    total = config.train_rois_per_image
    num_pos = num_positive_slots(config)
    extra = [gt_boxes]
    if config.roi_gt_jitter > 0:
        # moved copies of every ground-truth box: more positive slots for small objects,
        # which few proposals reach at IoU 0.5
        extra.append(ops.jitter_boxes(gt_boxes, config.roi_gt_jitter,
                                      seed=sub_seed(seed, 5)))
    candidates = tf.concat([proposals] + extra, axis=1)  # [B, R + N (1 + J), 4]
    candidate_ok = ops.box_area(candidates) > 0.0
    valid_gt = gt_class_ids > 0
    iou = ops.pairwise_iou(candidates, gt_boxes)
    iou = tf.where(valid_gt[:, None, :], iou, -1.0)
    max_iou = tf.reduce_max(iou, axis=2)
    matched = tf.argmax(iou, axis=2, output_type=tf.int32)
    positive = candidate_ok & (max_iou >= config.roi_positive_iou)
    negative = candidate_ok & (max_iou < config.roi_positive_iou)

    pos_idx, pos_valid = random_subset(positive, num_pos, seed=sub_seed(seed, 3))
    neg_idx, neg_valid = random_subset(negative, total - num_pos, seed=sub_seed(seed, 4))
    index = tf.concat([pos_idx, neg_idx], axis=1)
    is_pos = tf.concat([pos_valid, tf.zeros_like(neg_valid)], axis=1)
    valid = tf.concat([pos_valid, neg_valid], axis=1)

    rois = tf.gather(candidates, index, batch_dims=1)
    rois = tf.where(valid[..., None], rois, 0.0)
    gt_index = tf.gather(matched, index, batch_dims=1)
    class_ids = tf.where(is_pos, tf.gather(gt_class_ids, gt_index, batch_dims=1), 0)
    matched_boxes = tf.gather(gt_boxes, gt_index, batch_dims=1)
    deltas = ops.encode_boxes(matched_boxes, rois, config.bbox_std_dev)
    deltas = tf.where(is_pos[..., None], deltas, 0.0)
    out = dict(rois=rois, class_ids=class_ids, deltas=deltas, gt_index=gt_index, valid=valid,
               positive=is_pos)
    return {k: tf.stop_gradient(v) for k, v in out.items()}


def num_positive_slots(config) -> int:
    return max(1, int(round(config.train_rois_per_image * config.roi_positive_ratio)))


def num_mask_slots(config) -> int:
    """How many of the positive slots the mask head trains on: the first
    `mask_rois_per_image` (0: all). The positive slots are in random order (`sample_rois`),
    so the first M of them are a random subset of the image's positive ROIs."""
    npos = num_positive_slots(config)
    cap = config.mask_rois_per_image
    return min(npos, cap) if cap > 0 else npos


def mask_targets_flat(gt_masks: tf.Tensor, rois: tf.Tensor, image_index: tf.Tensor,
                      gt_index: tf.Tensor, size: int):
    """Mask targets for a flat list of ROIs [K, 4] of images `image_index` [K], each matched
    to ground truth `gt_index` [K] of its image -> float {0, 1} [K, size, size]."""
    num_gt = tf.shape(gt_masks)[1]
    height, width = tf.shape(gt_masks)[2], tf.shape(gt_masks)[3]
    masks = ops.pad_edges(tf.reshape(gt_masks, [-1, height, width, 1]))
    box_index = image_index * num_gt + gt_index
    crop_boxes = ops.aligned_crop_boxes(rois, 1.0, tf.shape(masks), size, offset=1.0)
    crops = tf.image.crop_and_resize(masks, crop_boxes, box_index, [size, size])
    return tf.stop_gradient(tf.cast(crops[..., 0] >= 0.5, tf.float32))


def positive_rois(rois: dict, npos: int) -> dict:
    """The positive ROIs that exist, flattened over the batch (the mask head trains on these
    alone, not on empty slots): rois [P, 4], image_index [P], class_ids [P], gt_index [P]."""
    where = tf.where(rois["positive"][:, :npos])
    image_index = tf.cast(where[:, 0], tf.int32)
    return {
        "rois": tf.gather_nd(rois["rois"][:, :npos], where),
        "image_index": image_index,
        "class_ids": tf.gather_nd(rois["class_ids"][:, :npos], where),
        "gt_index": tf.gather_nd(rois["gt_index"][:, :npos], where),
    }


def refine_detections(rois: tf.Tensor, class_logits: tf.Tensor, deltas: tf.Tensor,
                      windows: tf.Tensor, config, min_confidence: float | None = None):
    """Turn the box head's output on ROIs into final detections.

    Each ROI gives a class-specific box and score for every foreground class; per-class NMS
    (`detection_nms_threshold`), the score threshold and `detection_max_instances` follow.
    `windows` [B, 4] are the image areas (y1, x1, y2, x2) boxes are clipped to.
    Returns boxes [B, D, 4], scores [B, D], class_ids int32 [B, D] (1-based) and the number
    of valid detections [B], with D = detection_max_instances.
    """
    threshold = config.detection_min_confidence if min_confidence is None else min_confidence
    probs = tf.nn.softmax(class_logits)[..., 1:]  # [B, R, N-1]
    roi_ok = ops.box_area(rois) > 0.0
    probs = tf.where(roi_ok[..., None], probs, 0.0)
    boxes = ops.decode_boxes(deltas[:, :, 1:], rois[:, :, None, :], config.bbox_std_dev)
    w = windows[:, None, None, :]
    boxes = tf.stack([
        tf.clip_by_value(boxes[..., 0], w[..., 0], w[..., 2]),
        tf.clip_by_value(boxes[..., 1], w[..., 1], w[..., 3]),
        tf.clip_by_value(boxes[..., 2], w[..., 0], w[..., 2]),
        tf.clip_by_value(boxes[..., 3], w[..., 1], w[..., 3]),
    ], axis=-1)
    # drop boxes that clipping squashed flat
    probs = tf.where(ops.box_area(boxes) > 0.0, probs, 0.0)
    max_det = config.detection_max_instances
    nmsed_boxes, nmsed_scores, nmsed_classes, num_valid = tf.image.combined_non_max_suppression(
        boxes, probs, max_output_size_per_class=max_det, max_total_size=max_det,
        iou_threshold=config.detection_nms_threshold,
        score_threshold=tf.maximum(tf.cast(threshold, tf.float32), 1e-6), pad_per_class=False, clip_boxes=False,
    )
    class_ids = tf.cast(nmsed_classes, tf.int32) + 1
    valid = tf.range(max_det)[None, :] < num_valid[:, None]
    class_ids = tf.where(valid, class_ids, 0)
    return nmsed_boxes, nmsed_scores, class_ids, num_valid


def pool(pyramid, boxes, size):
    """ROI Align of [B, K, 4] boxes over P2..P5."""
    return ops.multilevel_roi_align(list(pyramid[:4]), boxes, size, PYRAMID_STRIDES)


def pool_flat(pyramid, boxes, image_index, size):
    """ROI Align of a flat list of boxes [K, 4] of images `image_index` [K] over P2..P5."""
    return ops.multilevel_roi_align_flat(list(pyramid[:4]), boxes, image_index, size,
                                         PYRAMID_STRIDES)
