"""Feature Pyramid Network on top of C2..C5, with matterport's layer names.

P5 = conv1x1(C5); P_k = upsample(P_{k+1}) + conv1x1(C_k) for k = 4, 3, 2; each then gets a 3x3
output conv (`fpn_p2`..`fpn_p5`); P6 is a stride-2 subsample of P5 (no weights), used by the
RPN only.
"""

from __future__ import annotations

import keras
from keras import layers

from casting.model.backbone import build_resnet


def build_fpn(c_features, channels: int = 256):
    c2, c3, c4, c5 = c_features
    p5 = layers.Conv2D(channels, 1, name="fpn_c5p5")(c5)
    p4 = layers.Add(name="fpn_p4add")([
        layers.UpSampling2D(2, name="fpn_p5upsampled")(p5),
        layers.Conv2D(channels, 1, name="fpn_c4p4")(c4)])
    p3 = layers.Add(name="fpn_p3add")([
        layers.UpSampling2D(2, name="fpn_p4upsampled")(p4),
        layers.Conv2D(channels, 1, name="fpn_c3p3")(c3)])
    p2 = layers.Add(name="fpn_p2add")([
        layers.UpSampling2D(2, name="fpn_p3upsampled")(p3),
        layers.Conv2D(channels, 1, name="fpn_c2p2")(c2)])
    p2 = layers.Conv2D(channels, 3, padding="same", name="fpn_p2")(p2)
    p3 = layers.Conv2D(channels, 3, padding="same", name="fpn_p3")(p3)
    p4 = layers.Conv2D(channels, 3, padding="same", name="fpn_p4")(p4)
    p5 = layers.Conv2D(channels, 3, padding="same", name="fpn_p5")(p5)
    p6 = layers.MaxPooling2D(1, strides=2, name="fpn_p6")(p5)
    return [p2, p3, p4, p5, p6]


def build_backbone_fpn(config) -> keras.Model:
    """A functional model: normalised image [B, S, S, 3] (S a multiple of 64) -> [P2, P3,
    P4, P5, P6]."""
    # any square side that is a multiple of 64: training crops are smaller than image_size
    image = keras.Input(shape=(None, None, 3), name="input_image")
    c_features = build_resnet(image, config.backbone, config.train_bn, config.norm)
    pyramid = build_fpn(c_features, config.fpn_channels)
    return keras.Model(image, pyramid, name="backbone_fpn")
