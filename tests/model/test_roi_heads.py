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
