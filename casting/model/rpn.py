"""Region proposal network: the shared head, anchor targets and proposal generation.

Head layers carry matterport's names (`rpn_conv_shared`, `rpn_class_raw`, `rpn_bbox_pred`);
`rpn_class_raw` gives [background, foreground] logits per anchor.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from casting.model import ops


class RPNHead(keras.layers.Layer):
    """Shared 3x3 conv + per-anchor class logits and box deltas, applied to every level."""

    def __init__(self, anchors_per_location: int, conv_channels: int = 512, **kwargs):
        super().__init__(**kwargs)
        self.anchors_per_location = anchors_per_location
        small = keras.initializers.RandomNormal(stddev=0.01)
        self.conv_shared = layers.Conv2D(conv_channels, 3, padding="same", activation="relu",
                                         name="rpn_conv_shared", kernel_initializer=small)
        self.class_raw = layers.Conv2D(2 * anchors_per_location, 1, name="rpn_class_raw",
                                       kernel_initializer=small)
        self.bbox_pred = layers.Conv2D(4 * anchors_per_location, 1, name="rpn_bbox_pred",
                                       kernel_initializer=small)

    def build(self, input_shape):
        self.conv_shared.build(input_shape)
        shared_shape = tuple(input_shape[:-1]) + (self.conv_shared.filters,)
        self.class_raw.build(shared_shape)
        self.bbox_pred.build(shared_shape)

    def call(self, pyramid):
        """pyramid: list of [B, H, W, C] -> (logits [B, A, 2], deltas [B, A, 4])."""
        logits, deltas = [], []
        for feature in pyramid:
            shared = self.conv_shared(feature)
            batch = tf.shape(feature)[0]
            logits.append(tf.reshape(self.class_raw(shared), [batch, -1, 2]))
            deltas.append(tf.reshape(self.bbox_pred(shared), [batch, -1, 4]))
        # float32 whatever the layers compute in: the losses, box decoding and NMS need it
        return (tf.cast(tf.concat(logits, axis=1), tf.float32),
                tf.cast(tf.concat(deltas, axis=1), tf.float32))


def random_subset(candidates: tf.Tensor, max_count: int, limit: tf.Tensor | None = None,
                  seed: tf.Tensor | None = None):
    """Pick at most `max_count` (and at most `limit[b]`) random True entries per row of the
    boolean [B, N] `candidates`. Returns (indices [B, max_count] int32, valid [B, max_count]).

    With `seed` (shape [2] integers) the choice is a function of the seed (stateless), so a
    training step draws the same subsets whether or not the run was resumed before it."""
    if seed is None:
        noise = tf.random.uniform(tf.shape(candidates))
    else:
        noise = tf.random.stateless_uniform(tf.shape(candidates), seed=seed)
    keys = tf.where(candidates, noise, -1.0)
    max_count = min(max_count, candidates.shape[1]) if candidates.shape[1] else max_count
    values, indices = tf.math.top_k(keys, k=max_count, sorted=True)
    valid = values >= 0.0
    if limit is not None:
        valid &= tf.range(max_count)[None, :] < limit[:, None]
    return indices, valid


def indices_to_mask(indices: tf.Tensor, valid: tf.Tensor, length: int) -> tf.Tensor:
    """Boolean [B, length] mask with True at the valid `indices` [B, K] of each row
    (indices within a row are distinct)."""
    batch = tf.shape(indices)[0]
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(indices))
    coords = tf.stack([rows, indices], axis=-1)
    counts = tf.scatter_nd(coords, tf.cast(valid, tf.int32), [batch, length])
    return counts > 0


def sub_seed(seed: tf.Tensor | None, purpose: int) -> tf.Tensor | None:
    """A seed of its own for each random choice of a step (None stays None)."""
    if seed is None:
        return None
    return tf.random.experimental.stateless_fold_in(seed, purpose)


def rpn_targets(anchors: tf.Tensor, gt_boxes: tf.Tensor, gt_class_ids: tf.Tensor, config,
                seed: tf.Tensor | None = None):
    """Anchor labels and box targets for the RPN.

    Returns `match` int32 [B, A] (1 positive, -1 negative, 0 ignored) with at most
    `rpn_train_anchors_per_image` non-zero entries per image (at most half positive), and
    `targets` float32 [B, A, 4] (std-scaled deltas to the matched ground truth).
    """
    num_anchors = anchors.shape[0]
    valid_gt = gt_class_ids > 0  # [B, N]
    iou = ops.pairwise_iou(anchors[None], gt_boxes)  # [B, A, N]
    iou = tf.where(valid_gt[:, None, :], iou, -1.0)
    max_iou = tf.reduce_max(iou, axis=2)
    matched = tf.argmax(iou, axis=2, output_type=tf.int32)
    # every ground-truth box gets its best anchor(s), however low the IoU
    best_per_gt = tf.reduce_max(iou, axis=1, keepdims=True)  # [B, 1, N]
    is_best = (iou >= best_per_gt) & valid_gt[:, None, :] & (best_per_gt > 0.0)
    positive = (max_iou >= config.rpn_positive_iou) | tf.reduce_any(is_best, axis=2)
    negative = (max_iou < config.rpn_negative_iou) & ~positive

    total = config.rpn_train_anchors_per_image
    pos_idx, pos_valid = random_subset(positive, total // 2, seed=sub_seed(seed, 1))
    num_pos = tf.reduce_sum(tf.cast(pos_valid, tf.int32), axis=1)
    neg_idx, neg_valid = random_subset(negative, total, limit=total - num_pos,
                                       seed=sub_seed(seed, 2))
    pos_mask = indices_to_mask(pos_idx, pos_valid, num_anchors)
    neg_mask = indices_to_mask(neg_idx, neg_valid, num_anchors)
    match = tf.cast(pos_mask, tf.int32) - tf.cast(neg_mask, tf.int32)

    matched_boxes = tf.gather(gt_boxes, matched, batch_dims=1)
    targets = ops.encode_boxes(matched_boxes, anchors[None], config.rpn_bbox_std_dev)
    targets = tf.where(pos_mask[..., None], targets, 0.0)
    return tf.stop_gradient(match), tf.stop_gradient(targets)


def generate_proposals(logits: tf.Tensor, deltas: tf.Tensor, anchors: tf.Tensor, config,
                       num_proposals: int, image_size: int | None = None) -> tf.Tensor:
    """Top-scoring anchors, refined by their deltas, clipped to the image (a square of
    `image_size`, default config.image_size) and thinned by NMS.

    Returns [B, num_proposals, 4] boxes in pixels, zero-padded where NMS left fewer.
    """
    scores = tf.nn.softmax(logits)[..., 1]
    pre_nms = min(config.pre_nms_limit, anchors.shape[0])
    top_scores, top_idx = tf.math.top_k(scores, k=pre_nms, sorted=True)
    top_deltas = tf.gather(deltas, top_idx, batch_dims=1)
    top_anchors = tf.gather(anchors, top_idx)
    boxes = ops.decode_boxes(top_deltas, top_anchors, config.rpn_bbox_std_dev)
    size = image_size or config.image_size
    boxes = ops.clip_boxes(boxes, size, size)

    def one_image(args):
        img_boxes, img_scores = args
        keep, valid = ops.nms_padded(img_boxes, img_scores, num_proposals,
                                     config.rpn_nms_threshold)
        kept = tf.gather(img_boxes, keep)
        return tf.where((tf.range(num_proposals) < valid)[:, None], kept, 0.0)

    proposals = tf.map_fn(one_image, (boxes, top_scores),
                          fn_output_signature=tf.TensorSpec([num_proposals, 4], tf.float32))
    return tf.stop_gradient(proposals)
