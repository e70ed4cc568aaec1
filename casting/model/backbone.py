"""ResNet50 / ResNet101 backbone with matterport's layer names.

`build_resnet(image, architecture, train_bn)` returns the stage outputs C2..C5 (strides 4, 8,
16, 32). Layers are named as in matterport's Mask_RCNN (`conv1`, `bn_conv1`,
`res2a_branch2a`, `bn2a_branch2a`, `res2a_branch1`, ...), so weights saved by it load by name.
Each stage's first block uses a projection shortcut; stages 3-5 downsample in that block's
first 1x1 convolution and shortcut, as matterport (and Keras' ResNet50) do.
"""

from __future__ import annotations

import keras
from keras import layers

BN_EPSILON = 1e-3
STAGE_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
STAGE_FILTERS = ((64, 64, 256), (128, 128, 512), (256, 256, 1024), (512, 512, 2048))


def _block_letter(index: int) -> str:
    return chr(ord("a") + index)


def batch_norm(name: str, train_bn: bool) -> layers.BatchNormalization:
    """A BatchNorm that, when `train_bn` is False, is frozen: it always uses its moving
    statistics and its gamma/beta never train (the right choice for small batches)."""
    return layers.BatchNormalization(name=name, epsilon=BN_EPSILON, trainable=train_bn)


def _conv(filters, kernel, name, strides=1, padding="valid"):
    return layers.Conv2D(filters, kernel, strides=strides, padding=padding, name=name,
                         use_bias=True, kernel_initializer="he_normal")


def bottleneck(x, filters, stage: int, block: str, train_bn: bool, strides: int = 1,
               projection: bool = False):
    """One bottleneck residual block (1x1 -> 3x3 -> 1x1) named like matterport's."""
    f1, f2, f3 = filters
    conv = f"res{stage}{block}_branch"
    bn = f"bn{stage}{block}_branch"
    y = _conv(f1, 1, conv + "2a", strides=strides)(x)
    y = batch_norm(bn + "2a", train_bn)(y)
    y = layers.Activation("relu")(y)
    y = _conv(f2, 3, conv + "2b", padding="same")(y)
    y = batch_norm(bn + "2b", train_bn)(y)
    y = layers.Activation("relu")(y)
    y = _conv(f3, 1, conv + "2c")(y)
    y = batch_norm(bn + "2c", train_bn)(y)
    if projection:
        shortcut = _conv(f3, 1, conv + "1", strides=strides)(x)
        shortcut = batch_norm(bn + "1", train_bn)(shortcut)
    else:
        shortcut = x
    y = layers.Add(name=f"res{stage}{block}_add")([y, shortcut])
    return layers.Activation("relu", name=f"res{stage}{block}_out")(y)


def build_resnet(image, architecture: str = "resnet50", train_bn: bool = False):
    """C2..C5 feature maps of a ResNet on `image` (a Keras tensor, already normalised)."""
    if architecture not in STAGE_BLOCKS:
        raise ValueError(f"unknown backbone {architecture!r}; choose {sorted(STAGE_BLOCKS)}")
    x = layers.ZeroPadding2D(3, name="conv1_pad")(image)
    x = _conv(64, 7, "conv1", strides=2)(x)
    x = batch_norm("bn_conv1", train_bn)(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    outputs = []
    for stage_index, (blocks, filters) in enumerate(zip(STAGE_BLOCKS[architecture], STAGE_FILTERS)):
        stage = stage_index + 2
        for b in range(blocks):
            strides = 2 if (b == 0 and stage > 2) else 1
            x = bottleneck(x, filters, stage, _block_letter(b), train_bn, strides=strides,
                           projection=(b == 0))
        outputs.append(x)
    return outputs
