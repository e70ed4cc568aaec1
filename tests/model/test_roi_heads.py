"""roi_heads: the box head's fully connected layers computed as matrix products."""

import numpy as np
import tensorflow as tf

from casting.model.roi_heads import BoxHead


def test_box_head_matmul_equals_the_convolutions_it_replaces():
    head = BoxHead(num_classes=3, fc_size=32, pool_size=7)
    pooled = tf.random.stateless_normal([2, 5, 7, 7, 16], seed=[1, 2])
    head.build(pooled.shape)
    rng = np.random.default_rng(0)
    for bn in (head.bn1, head.bn2):  # non-trivial frozen statistics
        bn.moving_mean.assign(rng.normal(size=bn.moving_mean.shape).astype(np.float32))
        bn.moving_variance.assign(rng.uniform(0.5, 2, bn.moving_variance.shape).astype(np.float32))
    logits, deltas = head(pooled)
    assert logits.shape == (2, 5, 3) and deltas.shape == (2, 5, 3, 4)

    # the same layers as convolutions (matterport's TimeDistributed Conv2D 7x7 and 1x1)
    x = tf.reshape(pooled, [-1, 7, 7, 16])
    x = tf.nn.conv2d(x, head.conv1.kernel, 1, "VALID") + head.conv1.bias
    x = tf.nn.relu(head.bn1(x, training=False))
    x = tf.nn.conv2d(x, head.conv2.kernel, 1, "VALID") + head.conv2.bias
    x = tf.reshape(tf.nn.relu(head.bn2(x, training=False)), [-1, 32])
    np.testing.assert_allclose(logits.numpy().reshape(-1, 3), head.logits(x).numpy(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(deltas.numpy().reshape(-1, 12), head.bbox(x).numpy(),
                               rtol=1e-4, atol=1e-5)
    # gradients reach the convolution kernels
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(head(pooled, training=False)[0])
    grads = tape.gradient(loss, [head.conv1.kernel, head.conv2.kernel])
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_positive_rois_are_the_filled_positive_slots_of_every_image():
    from casting.model.roi_heads import positive_rois

    rois = {
        "rois": tf.constant([[[0, 0, 4, 4], [1, 1, 5, 5], [0, 0, 0, 0]],
                             [[2, 2, 9, 9], [0, 0, 0, 0], [3, 3, 6, 6]]], tf.float32),
        "positive": tf.constant([[True, True, False], [True, False, True]]),
        "class_ids": tf.constant([[1, 2, 0], [2, 0, 1]]),
        "gt_index": tf.constant([[0, 1, 0], [3, 0, 2]]),
    }
    # the third slot is a negative slot (npos = 2): never taken, even when marked positive
    pos = positive_rois(rois, npos=2)
    np.testing.assert_array_equal(pos["image_index"], [0, 0, 1])
    np.testing.assert_array_equal(pos["rois"], [[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 9, 9]])
    np.testing.assert_array_equal(pos["class_ids"], [1, 2, 2])
    np.testing.assert_array_equal(pos["gt_index"], [0, 1, 3])
    none = positive_rois({**rois, "positive": tf.zeros([2, 3], tf.bool)}, npos=2)
    assert none["rois"].shape == (0, 4)


def test_mask_targets_crop_the_matched_instance_of_its_image():
    from casting.model.roi_heads import mask_targets_flat

    # a mask target is the matched instance's mask, cropped to the ROI at bin centres
    gt = np.zeros((2, 2, 64, 64), np.uint8)
    gt[1, 1, 8:24, 8:16] = 1  # image 1, instance 1: left half of the ROI below
    targets = mask_targets_flat(tf.constant(gt), tf.constant([[8, 8, 24, 24]], tf.float32),
                                tf.constant([1]), tf.constant([1]), 4).numpy()
    np.testing.assert_array_equal(targets[0], [[1, 1, 0, 0]] * 4)
    other = mask_targets_flat(tf.constant(gt), tf.constant([[8, 8, 24, 24]], tf.float32),
                              tf.constant([0]), tf.constant([1]), 4).numpy()
    assert other.sum() == 0  # image 0 has no such mask


def test_seeded_sampling_is_a_function_of_the_seed():
    """Training passes (config seed, step) as the sampling seed: the same seed draws the
    same anchors and ROIs (a resumed run samples as an uninterrupted one); another differs."""
    from casting.model.rpn import random_subset

    candidates = tf.constant(np.random.default_rng(0).random((2, 500)) > 0.5)
    seed = tf.constant([42, 7], tf.int64)
    a, valid_a = random_subset(candidates, 64, seed=seed)
    b, valid_b = random_subset(candidates, 64, seed=seed)
    c, _ = random_subset(candidates, 64, seed=tf.constant([42, 8], tf.int64))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert valid_a.numpy().all() and valid_b.numpy().all()
    assert not np.array_equal(a.numpy(), c.numpy())
    picked = np.take_along_axis(candidates.numpy(), a.numpy(), axis=1)
    assert picked.all()  # only candidates are picked


def test_mask_rois_per_image_caps_the_mask_heads_rois_with_a_random_subset():
    import pytest

    from casting.config import Config, ConfigError
    from casting.model.roi_heads import num_mask_slots, positive_rois, sample_rois

    assert num_mask_slots(Config()) == 32  # 0: every positive slot (128 x 0.25)
    assert num_mask_slots(Config(mask_rois_per_image=8)) == 8
    assert num_mask_slots(Config(mask_rois_per_image=500)) == 32
    with pytest.raises(ConfigError, match="mask_rois_per_image"):
        Config(mask_rois_per_image=-1)

    # one image, one ground-truth box and 40 proposals that overlap it (all positive)
    cfg = Config(train_rois_per_image=64, roi_positive_ratio=0.5, mask_rois_per_image=5)
    gt = tf.constant([[[10.0, 10.0, 50.0, 50.0]]])
    shifts = tf.range(40, dtype=tf.float32)[:, None] * 0.1
    proposals = (gt[0] + shifts)[None]
    picked = []
    for s in range(3):
        rois = sample_rois(proposals, gt, tf.constant([[1]]), cfg, seed=tf.constant([s, 7]))
        assert int(tf.reduce_sum(tf.cast(rois["positive"], tf.int32))) == 32
        pos = positive_rois(rois, num_mask_slots(cfg))
        assert pos["rois"].shape == (5, 4)  # the cap, not the 32 positives
        picked.append(sorted(map(tuple, pos["rois"].numpy().round(2).tolist())))
    assert picked[0] != picked[1] or picked[1] != picked[2]  # a random subset, per seed


def test_jittered_ground_truth_fills_the_positive_slots_of_a_small_object():
    """roi_gt_jitter: a small object that no proposal reaches gets moved copies of its box as
    positive ROIs (it had only its own box), each matched to it, with deltas back to it."""
    import pytest

    from casting.config import Config, ConfigError
    from casting.model import ops
    from casting.model.roi_heads import sample_rois

    gt = tf.constant([[[20.0, 30.0, 32.0, 42.0], [0.0, 0.0, 0.0, 0.0]]])  # a 12-px chip, padding
    classes = tf.constant([[3, 0]])
    far = tf.constant([[[100.0, 100.0, 140.0, 140.0]] * 20])  # proposals that miss it
    seed = tf.constant([3, 1])

    copies = ops.jitter_boxes(gt, 6, seed=seed)
    assert copies.shape == (1, 12, 4)
    iou = ops.pairwise_iou(copies[0, 0::2], gt[0, :1]).numpy()
    assert (iou >= 0.6).all() and (iou < 1.0).all()  # moved, and still the object
    np.testing.assert_array_equal(copies[0, 1::2].numpy(), 0.0)  # padding stays empty

    def positives(cfg):
        rois = sample_rois(far, gt, classes, cfg, seed=seed)
        pos = rois["positive"].numpy()[0]
        return rois, pos

    _, plain = positives(Config(train_rois_per_image=16, roi_positive_ratio=0.5))
    assert plain.sum() == 1  # the ground-truth box alone
    cfg = Config(train_rois_per_image=16, roi_positive_ratio=0.5, roi_gt_jitter=6)
    rois, pos = positives(cfg)
    assert pos.sum() == 7
    np.testing.assert_array_equal(rois["class_ids"].numpy()[0][pos], 3)
    np.testing.assert_array_equal(rois["gt_index"].numpy()[0][pos], 0)
    back = ops.decode_boxes(rois["deltas"][0][pos], rois["rois"][0][pos], cfg.bbox_std_dev)
    np.testing.assert_allclose(back.numpy(), np.repeat(gt[0, :1].numpy(), 7, 0), atol=1e-3)
    with pytest.raises(ConfigError, match="roi_gt_jitter"):
        Config(roi_gt_jitter=-1)
