"""Each loss on known targets."""

import math

import numpy as np
import pytest
import tensorflow as tf

from casting.model import losses as L


def test_rpn_class_loss_counts_only_sampled_anchors():
    match = tf.constant([[1, -1, 0, 0]])
    logits = tf.constant([[[0.0, 0.0], [0.0, 0.0], [100.0, -100.0], [-100.0, 100.0]]])
    assert float(L.rpn_class_loss(match, logits)) == pytest.approx(math.log(2.0))
    confident = tf.constant([[[-20.0, 20.0], [20.0, -20.0], [0.0, 0.0], [0.0, 0.0]]])
    assert float(L.rpn_class_loss(match, confident)) == pytest.approx(0.0, abs=1e-6)


def test_rpn_bbox_loss_smooth_l1_over_positives():
    match = tf.constant([[1, -1]])
    targets = tf.zeros([1, 2, 4])
    deltas = tf.constant([[[0.5, -2.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]])
    # (0.125 + 1.5 + 0 + 0) / 4 coordinates of the one positive
    assert float(L.rpn_bbox_loss(match, targets, deltas)) == pytest.approx(1.625 / 4)


def test_mrcnn_class_loss_masks_invalid_rois():
    ids = tf.constant([[1, 0, 2]])
    logits = tf.constant([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    valid = tf.constant([[True, True, False]])
    assert float(L.mrcnn_class_loss(ids, logits, valid)) == pytest.approx(math.log(3.0))


def test_mrcnn_bbox_loss_uses_true_class_deltas():
    ids = tf.constant([[2, 0]])
    targets = tf.constant([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    deltas = np.zeros((1, 2, 3, 4), np.float32)
    deltas[0, 0, 1] = 50.0  # wrong class: ignored
    deltas[0, 0, 2] = [1.0, 0.0, 0.5, 0.0]
    positive = tf.constant([[True, False]])
    assert float(L.mrcnn_bbox_loss(ids, targets, tf.constant(deltas), positive)) == \
        pytest.approx(0.125 / 4)


def test_mrcnn_mask_loss_true_class_channel():
    ids = tf.constant([[1]])
    targets = tf.ones([1, 1, 2, 2])
    logits = np.zeros((1, 1, 2, 2, 3), np.float32)
    logits[..., 2] = -30.0  # another class: ignored
    positive = tf.constant([[True]])
    assert float(L.mrcnn_mask_loss(ids, targets, tf.constant(logits), positive)) == \
        pytest.approx(math.log(2.0))
    logits[..., 1] = 30.0
    assert float(L.mrcnn_mask_loss(ids, targets, tf.constant(logits), positive)) == \
        pytest.approx(0.0, abs=1e-6)


def test_losses_are_zero_not_nan_without_positives():
    assert float(L.rpn_bbox_loss(tf.constant([[-1, 0]]), tf.zeros([1, 2, 4]),
                                 tf.ones([1, 2, 4]))) == 0.0
    assert float(L.mrcnn_mask_loss(tf.constant([[0]]), tf.zeros([1, 1, 2, 2]),
                                   tf.zeros([1, 1, 2, 2, 2]), tf.constant([[False]]))) == 0.0


def test_mrcnn_class_loss_weighs_object_rois():
    """foreground_weight: a weighted mean in which an object's ROIs count w times."""
    ids = tf.constant([[2, 0, 0, 0]])
    logits = tf.constant([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    valid = tf.constant([[True, True, True, False]])
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ids, logits=logits).numpy()[0]
    plain = float(L.mrcnn_class_loss(ids, logits, valid))
    assert plain == pytest.approx(ce[:3].mean(), rel=1e-6)
    weighted = float(L.mrcnn_class_loss(ids, logits, valid, foreground_weight=4.0))
    assert weighted == pytest.approx((4 * ce[0] + ce[1] + ce[2]) / 6, rel=1e-6)
    none = tf.zeros_like(valid)
    assert float(L.mrcnn_class_loss(ids, logits, none, foreground_weight=4.0)) == 0.0
