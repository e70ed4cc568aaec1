"""XLA for the parts of the model whose shapes are static within a step (`config.xla`).

`backbone`: ResNet + FPN (one shape per input size); `box_head`: the box head on a fixed
number of ROIs per image (128 in training, the proposal count at inference). The RPN's
proposal selection, ROI Align's per-level routing and the mask head (on as many ROIs as
there are positives or detections) have data-dependent shapes and stay outside XLA.
Measured on CPU in docs/training.md ("Precision and XLA"); off by default.
"""

from __future__ import annotations

import tensorflow as tf

from casting.config import XLA_PARTS

__all__ = ["XLA_PARTS", "compiled"]  # XLA_PARTS: the names config.xla takes


def compiled(layer, on: bool):
    """A function that runs `layer`: as it is, or compiled by XLA (one trace per input
    shape and `training` value). A function, not the layer, so that Keras does not track
    the layer twice."""
    if not on:
        return lambda x, training=False: layer(x, training=training)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def run(x, training=False):
        return layer(x, training=training)

    return run
