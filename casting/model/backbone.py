"""ResNet50 / ResNet101 backbone with matterport's layer names.

`build_resnet(image, architecture, train_bn)` returns the stage outputs C2..C5 (strides 4, 8,
16, 32). Layers are named as in matterport's Mask_RCNN (`conv1`, `bn_conv1`,
`res2a_branch2a`, `bn2a_branch2a`, `res2a_branch1`, ...), so weights saved by it load by name.
Each stage's first block uses a projection shortcut; stages 3-5 downsample in that block's
first 1x1 convolution and shortcut, as matterport (and Keras' ResNet50) do.
"""

from __future__ import annotations

from keras import layers

from casting.config import NORMS

BN_EPSILON = 1e-3
STAGE_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
STAGE_FILTERS = ((64, 64, 256), (128, 128, 512), (256, 256, 1024), (512, 512, 2048))


def _block_letter(index: int) -> str:
    return chr(ord("a") + index)


GN_GROUPS = 32
GN_EPSILON = 1e-5


def batch_norm(name: str, train_bn: bool) -> layers.BatchNormalization:
    """A BatchNorm that, when `train_bn` is False, is frozen: it always uses its moving
    statistics and its gamma/beta never train (the right choice for small batches)."""
    return layers.BatchNormalization(name=name, epsilon=BN_EPSILON, trainable=train_bn)


def norm_layer(name: str, norm: str = "batch", train_bn: bool = False) -> layers.Layer:
    """The normalisation after a convolution, under matterport's BatchNorm layer name.

    `batch`: BatchNorm, frozen unless `train_bn` (pretrained statistics; small batches).
    `group`: GroupNorm with 32 groups (Wu & He, 2018), always trained: per-image statistics,
    so it behaves the same at batch 1 or 2 and from random weights, where frozen BatchNorm
    has no statistics worth freezing. Its gamma/beta take the BatchNorm's name; a
    BatchNorm's four arrays do not load into it (see docs/quality.md)."""
    if norm == "batch":
        return batch_norm(name, train_bn)
    if norm == "group":
        return layers.GroupNormalization(groups=GN_GROUPS, epsilon=GN_EPSILON, name=name)
    raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")


def _conv(filters, kernel, name, strides=1, padding="valid"):
    return layers.Conv2D(filters, kernel, strides=strides, padding=padding, name=name,
                         use_bias=True, kernel_initializer="he_normal")


def bottleneck(x, filters, stage: int, block: str, train_bn: bool, strides: int = 1,
               projection: bool = False, norm: str = "batch"):
    """One bottleneck residual block (1x1 -> 3x3 -> 1x1) named like matterport's."""
    f1, f2, f3 = filters
    conv = f"res{stage}{block}_branch"
    bn = f"bn{stage}{block}_branch"
    y = _conv(f1, 1, conv + "2a", strides=strides)(x)
    y = norm_layer(bn + "2a", norm, train_bn)(y)
    y = layers.Activation("relu")(y)
    y = _conv(f2, 3, conv + "2b", padding="same")(y)
    y = norm_layer(bn + "2b", norm, train_bn)(y)
    y = layers.Activation("relu")(y)
    y = _conv(f3, 1, conv + "2c")(y)
    y = norm_layer(bn + "2c", norm, train_bn)(y)
    if projection:
        shortcut = _conv(f3, 1, conv + "1", strides=strides)(x)
        shortcut = norm_layer(bn + "1", norm, train_bn)(shortcut)
    else:
        shortcut = x
    y = layers.Add(name=f"res{stage}{block}_add")([y, shortcut])
    return layers.Activation("relu", name=f"res{stage}{block}_out")(y)


def build_resnet(image, architecture: str = "resnet50", train_bn: bool = False,
                 norm: str = "batch"):
    """C2..C5 feature maps of a ResNet on `image` (a Keras tensor, already normalised)."""
    if architecture not in STAGE_BLOCKS:
        raise ValueError(f"unknown backbone {architecture!r}; choose {sorted(STAGE_BLOCKS)}")
    x = layers.ZeroPadding2D(3, name="conv1_pad")(image)
    x = _conv(64, 7, "conv1", strides=2)(x)
    x = norm_layer("bn_conv1", norm, train_bn)(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    outputs = []
    for stage_index, (blocks, filters) in enumerate(zip(STAGE_BLOCKS[architecture], STAGE_FILTERS)):
        stage = stage_index + 2
        for b in range(blocks):
            strides = 2 if (b == 0 and stage > 2) else 1
            x = bottleneck(x, filters, stage, _block_letter(b), train_bn, strides=strides,
                           projection=(b == 0), norm=norm)
        outputs.append(x)
    return outputs
