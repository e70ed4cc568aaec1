"""Box, IoU, NMS and ROI Align ops against hand-computed values."""

import math

import numpy as np
import pytest
import tensorflow as tf

from casting.model import ops


def test_iou_hand_computed():
    a = tf.constant([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    b = tf.constant([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    iou = ops.pairwise_iou(a, b).numpy()
    assert iou.shape == (2, 3)
    assert iou[0, 0] == pytest.approx(25.0 / 175.0)
    assert iou[0, 1] == pytest.approx(1.0)
    assert iou[0, 2] == 0.0
    assert np.all(iou[1] == 0.0)  # a zero-area (padding) box matches nothing


def test_encode_hand_computed_and_round_trip():
    ref = tf.constant([[0.0, 0.0, 10.0, 10.0]])
    box = tf.constant([[2.0, 2.0, 12.0, 32.0]])
    std = (0.1, 0.1, 0.2, 0.2)
    deltas = ops.encode_boxes(box, ref, std).numpy()[0]
    # centre moves by 2 px down (0.2 of the height) and 12 px right (1.2 of the width)
    assert deltas == pytest.approx([0.2 / 0.1, 1.2 / 0.1, 0.0, math.log(3.0) / 0.2], rel=1e-5)
    rng = np.random.default_rng(0)
    refs = rng.uniform(0, 100, (50, 2))
    refs = np.concatenate([refs, refs + rng.uniform(1, 60, (50, 2))], 1).astype(np.float32)
    boxes = rng.uniform(0, 100, (50, 2))
    boxes = np.concatenate([boxes, boxes + rng.uniform(1, 60, (50, 2))], 1).astype(np.float32)
    back = ops.decode_boxes(ops.encode_boxes(boxes, refs, std), refs, std).numpy()
    np.testing.assert_allclose(back, boxes, rtol=1e-4, atol=1e-3)


def test_clip_boxes():
    out = ops.clip_boxes(tf.constant([[-5.0, 3.0, 20.0, 50.0]]), 16, 40).numpy()
    assert out.tolist() == [[0.0, 3.0, 16.0, 40.0]]


def test_smooth_l1_values():
    out = ops.smooth_l1(tf.constant([0.0, 0.5, -2.0])).numpy()
    assert out == pytest.approx([0.0, 0.125, 1.5])


def test_nms_padded_keeps_best_of_overlaps_and_pads():
    boxes = tf.constant([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    scores = tf.constant([0.6, 0.9, 0.5])
    keep, valid = ops.nms_padded(boxes, scores, max_output=5, iou_threshold=0.5)
    assert int(valid) == 2
    assert keep.numpy().tolist() == [1, 2, 0, 0, 0]


def test_roi_align_samples_bin_centres():
    # feature value = x index; a cell's value sits at its centre (x + 0.5 in image pixels)
    feature = tf.tile(tf.range(16, dtype=tf.float32)[None, None, :, None], [1, 16, 1, 1])
    boxes = tf.constant([[0.0, 2.0, 4.0, 6.0]])
    out = ops.roi_align(feature, boxes, tf.constant([0]), stride=1.0, output_size=2).numpy()
    # bin [2, 4): samples at 2.5, 3.5 -> values 2, 3 -> 2.5; bin [4, 6): 4.5
    np.testing.assert_allclose(out[0, :, :, 0], [[2.5, 4.5], [2.5, 4.5]], atol=1e-5)
    # the same box on a stride-2 map of the same ramp (value = 2 * index + 0.5)
    feature2 = tf.tile((tf.range(8, dtype=tf.float32) * 2.0 + 0.5)[None, None, :, None],
                       [1, 8, 1, 1])
    out2 = ops.roi_align(feature2, boxes, tf.constant([0]), stride=2.0, output_size=2).numpy()
    np.testing.assert_allclose(out2[0, 0, :, 0], [2.5, 4.5], atol=1e-5)


def test_fpn_levels():
    boxes = tf.constant([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 16, 16], [0, 0, 1000, 1000]],
                        tf.float32)
    assert ops.fpn_levels(boxes).numpy().tolist() == [4, 3, 2, 5]


def _pyramid_and_boxes(seed=1):
    """P2..P5 of two 64 px images and two boxes per image of different levels."""
    rng = np.random.default_rng(seed)
    features = [tf.constant(rng.normal(size=(2, 64 // s, 64 // s, 3)), tf.float32)
                for s in (4, 8, 16, 32)]
    boxes = tf.constant([[[0, 0, 10, 10], [0, 0, 60, 60]], [[5, 5, 40, 40], [1, 2, 9, 30]]],
                        tf.float32)
    return features, boxes


def test_flat_multilevel_roi_align_matches_the_batched_form():
    features, boxes = _pyramid_and_boxes(4)
    batched = ops.multilevel_roi_align(features, boxes, 3).numpy()
    flat = ops.multilevel_roi_align_flat(features, tf.reshape(boxes, [-1, 4]),
                                         tf.constant([0, 0, 1, 1]), 3).numpy()
    np.testing.assert_allclose(flat.reshape(batched.shape), batched, atol=1e-6)
    empty = ops.multilevel_roi_align_flat(features, tf.zeros([0, 4]), tf.zeros([0], tf.int32), 3)
    assert empty.shape == (0, 3, 3, 3)


def test_multilevel_roi_align_matches_single_level_per_box():
    features, boxes = _pyramid_and_boxes()
    out = ops.multilevel_roi_align(features, boxes, 2).numpy()
    levels = ops.fpn_levels(tf.reshape(boxes, [-1, 4])).numpy()
    for i, level in enumerate(levels):
        b, k = divmod(i, 2)
        stride = 2 ** level
        single = ops.roi_align(features[level - 2], boxes[b, k][None], tf.constant([b]),
                               float(stride), 2).numpy()[0]
        np.testing.assert_allclose(out[b, k], single, atol=1e-6)
