"""The five Mask R-CNN losses, named as the field knows them.

Each returns a scalar and is 0 (not NaN) when it has nothing to average over.
"""

from __future__ import annotations

import tensorflow as tf

from casting.model import ops


def _masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of `values` over `mask` (boolean, or float weights: a weighted mean)."""
    mask = tf.cast(mask, values.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(values * mask), tf.reduce_sum(mask))


def rpn_class_loss(match: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of [background, foreground] logits [B, A, 2] over the sampled anchors
    (`match` != 0; 1 is foreground)."""
    labels = tf.cast(match > 0, tf.int32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return _masked_mean(ce, match != 0)


def rpn_bbox_loss(match: tf.Tensor, targets: tf.Tensor, deltas: tf.Tensor) -> tf.Tensor:
    """Smooth-L1 between predicted and target deltas [B, A, 4], averaged over the coordinates
    of positive anchors."""
    per_coord = ops.smooth_l1(deltas - targets)
    mask = tf.broadcast_to(tf.cast(match > 0, per_coord.dtype)[..., None], tf.shape(per_coord))
    return _masked_mean(per_coord, mask)


def mrcnn_class_loss(class_ids: tf.Tensor, logits: tf.Tensor, valid: tf.Tensor,
                     foreground_weight: float = 1.0) -> tf.Tensor:
    """Cross-entropy of ROI class logits [B, T, N] against `class_ids` [B, T] over valid ROIs;
    a weighted mean where ROIs of an object (class_ids > 0) weigh `foreground_weight`."""
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=class_ids, logits=logits)
    weight = tf.where(class_ids > 0, tf.cast(foreground_weight, ce.dtype), 1.0)
    return _masked_mean(ce, tf.cast(valid, ce.dtype) * weight)  # a weighted mean


def mrcnn_bbox_loss(class_ids: tf.Tensor, targets: tf.Tensor, deltas: tf.Tensor,
                    positive: tf.Tensor) -> tf.Tensor:
    """Smooth-L1 on the deltas [B, T, N, 4] of each positive ROI's true class, averaged over
    coordinates."""
    chosen = tf.gather(deltas, class_ids, batch_dims=2)  # [B, T, 4]
    per_coord = ops.smooth_l1(chosen - targets)
    mask = tf.broadcast_to(tf.cast(positive, per_coord.dtype)[..., None], tf.shape(per_coord))
    return _masked_mean(per_coord, mask)


def mrcnn_mask_loss(class_ids: tf.Tensor, targets: tf.Tensor, mask_logits: tf.Tensor,
                    positive: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy of the true class's mask logits [B, P, s, s, N] against the
    targets [B, P, s, s], averaged over the pixels of positive ROIs."""
    logits = tf.gather(tf.transpose(mask_logits, [0, 1, 4, 2, 3]), class_ids, batch_dims=2)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    mask = tf.broadcast_to(tf.cast(positive, bce.dtype)[..., None, None], tf.shape(bce))
    return _masked_mean(bce, mask)
