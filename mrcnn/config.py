"""matterport's `Config`: UPPER_CASE class attributes, overridden by subclassing.

    class ShapesConfig(Config):
        NAME = "shapes"
        IMAGES_PER_GPU = 8
        NUM_CLASSES = 1 + 3

    config = ShapesConfig()
    config.display()

The defaults are matterport's. `to_casting_config(class_names)` maps the attributes onto the
typed `casting.config.Config` the model runs on; `MAPPING` lists which attribute becomes
which field. An UPPER_CASE attribute whose lower-case name is a `casting.config.Config` field
(`WARMUP_STEPS`, `SEED`, `AUGMENT`, ...) is passed through as well.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# matterport attribute -> casting.config.Config field
MAPPING = {
    "BATCH_SIZE": "batch_size",
    "STEPS_PER_EPOCH": "steps_per_epoch",
    "VALIDATION_STEPS": "validation_steps",
    "BACKBONE": "backbone",
    "BACKBONE_STRIDES": "backbone_strides",
    "FPN_CLASSIF_FC_LAYERS_SIZE": "fc_layers_size",
    "TOP_DOWN_PYRAMID_SIZE": "fpn_channels",
    "RPN_ANCHOR_SCALES": "rpn_anchor_scales",
    "RPN_ANCHOR_RATIOS": "rpn_anchor_ratios",
    "RPN_NMS_THRESHOLD": "rpn_nms_threshold",
    "RPN_TRAIN_ANCHORS_PER_IMAGE": "rpn_train_anchors_per_image",
    "PRE_NMS_LIMIT": "pre_nms_limit",
    "POST_NMS_ROIS_TRAINING": "post_nms_rois_training",
    "POST_NMS_ROIS_INFERENCE": "post_nms_rois_inference",
    "MEAN_PIXEL": "mean_pixel",
    "TRAIN_ROIS_PER_IMAGE": "train_rois_per_image",
    "ROI_POSITIVE_RATIO": "roi_positive_ratio",
    "POOL_SIZE": "pool_size",
    "MASK_POOL_SIZE": "mask_pool_size",
    "MASK_SHAPE": "mask_shape",
    "MAX_GT_INSTANCES": "max_gt_instances",
    "RPN_BBOX_STD_DEV": "rpn_bbox_std_dev",
    "BBOX_STD_DEV": "bbox_std_dev",
    "DETECTION_MAX_INSTANCES": "detection_max_instances",
    "DETECTION_MIN_CONFIDENCE": "detection_min_confidence",
    "DETECTION_NMS_THRESHOLD": "detection_nms_threshold",
    "LEARNING_RATE": "learning_rate",
    "LEARNING_MOMENTUM": "momentum",
    "WEIGHT_DECAY": "weight_decay",
    "LOSS_WEIGHTS": "loss_weights",
    "TRAIN_BN": "train_bn",
    "GRADIENT_CLIP_NORM": "gradient_clip_norm",
}
# Attributes accepted for compatibility that have no counterpart (and why).
IGNORED = {
    "NAME": "names the log folder and checkpoints only",
    "GPU_COUNT": "the batch is BATCH_SIZE = IMAGES_PER_GPU * GPU_COUNT on one device",
    "IMAGES_PER_GPU": "see BATCH_SIZE",
    "NUM_CLASSES": "comes from the class names (background + classes)",
    "COMPUTE_BACKBONE_SHAPE": "feature shapes follow from the image size",
    "RPN_ANCHOR_STRIDE": "anchors sit on every feature-map position (stride 1)",
    "USE_MINI_MASK": "masks are kept at full image size",
    "MINI_MASK_SHAPE": "masks are kept at full image size",
    "IMAGE_MIN_DIM": "images are scaled so the long side is IMAGE_MAX_DIM",
    "IMAGE_MIN_SCALE": "images are scaled so the long side is IMAGE_MAX_DIM",
    "IMAGE_CHANNEL_COUNT": "RGB only",
    "USE_RPN_ROIS": "the heads always train on RPN proposals",
    "IMAGE_RESIZE_MODE": "every mode becomes a square IMAGE_MAX_DIM input",
    "IMAGE_SHAPE": "derived",
    "IMAGE_META_SIZE": "derived",
}


class Config:
    """Base configuration with matterport's defaults. Subclass and override attributes."""

    NAME = None
    GPU_COUNT = 1
    IMAGES_PER_GPU = 2
    STEPS_PER_EPOCH = 1000
    VALIDATION_STEPS = 50
    BACKBONE = "resnet101"
    COMPUTE_BACKBONE_SHAPE = None
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]
    FPN_CLASSIF_FC_LAYERS_SIZE = 1024
    TOP_DOWN_PYRAMID_SIZE = 256
    NUM_CLASSES = 1
    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]
    RPN_ANCHOR_STRIDE = 1
    RPN_NMS_THRESHOLD = 0.7
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256
    PRE_NMS_LIMIT = 6000
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000
    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    IMAGE_MIN_SCALE = 0
    IMAGE_CHANNEL_COUNT = 3
    MEAN_PIXEL = np.array([123.7, 116.8, 103.9])
    TRAIN_ROIS_PER_IMAGE = 200
    ROI_POSITIVE_RATIO = 0.33
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14
    MASK_SHAPE = [28, 28]
    MAX_GT_INSTANCES = 100
    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3
    LEARNING_RATE = 0.001
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 0.0001
    LOSS_WEIGHTS = {
        "rpn_class_loss": 1.0,
        "rpn_bbox_loss": 1.0,
        "mrcnn_class_loss": 1.0,
        "mrcnn_bbox_loss": 1.0,
        "mrcnn_mask_loss": 1.0,
    }
    USE_RPN_ROIS = True
    TRAIN_BN = False
    GRADIENT_CLIP_NORM = 5.0

    def __init__(self) -> None:
        self.BATCH_SIZE = self.IMAGES_PER_GPU * self.GPU_COUNT
        if self.IMAGE_RESIZE_MODE == "crop":
            side = self.IMAGE_MIN_DIM
        else:
            side = self.IMAGE_MAX_DIM
        self.IMAGE_SHAPE = np.array([side, side, self.IMAGE_CHANNEL_COUNT])
        # image id, original shape, image shape, window, scale, active class ids
        self.IMAGE_META_SIZE = 1 + 3 + 3 + 4 + 1 + self.NUM_CLASSES

    # ---- matterport's helpers ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in dir(self)
            if name.isupper() and not name.startswith("__") and not callable(getattr(self, name))
        }

    def display(self) -> None:
        """Print the configuration values."""
        print("\nConfigurations:")
        for key, value in sorted(self.to_dict().items()):
            print(f"{key:30} {value}")
        print("\n")

    # ---- onto our typed config ---------------------------------------------------------
    def to_casting_config(self, class_names=None):
        """The equivalent `casting.config.Config`. `class_names` (background excluded)
        default to `class1..classN` for NUM_CLASSES - 1 classes."""
        from casting.config import Config as CastingConfig, ConfigError

        n = int(self.NUM_CLASSES) - 1
        if n < 1:
            raise ConfigError(
                f"{type(self).__name__}.NUM_CLASSES = {self.NUM_CLASSES}: it counts the "
                "background too, so it must be at least 2"
            )
        if class_names is None:
            class_names = [f"class{i}" for i in range(1, n + 1)]
        class_names = [str(c) for c in class_names]
        if class_names and class_names[0] in ("BG", "background"):
            class_names = class_names[1:]
        if len(class_names) != n:
            raise ConfigError(
                f"{type(self).__name__}.NUM_CLASSES = {self.NUM_CLASSES} but the dataset has "
                f"{len(class_names)} classes besides the background: {class_names}"
            )
        if callable(self.BACKBONE):
            raise ConfigError("a callable BACKBONE is not supported; use 'resnet50' or 'resnet101'")
        if int(self.RPN_ANCHOR_STRIDE) != 1:
            raise ConfigError("RPN_ANCHOR_STRIDE must be 1 (anchors on every position)")

        # matterport's fixed choices where our config's defaults differ: the RPN's shared
        # conv has 512 channels (so matterport .h5 RPN weights fit), no warm-up, and no
        # augmentation besides the `augmentation` passed to train().
        values: dict[str, Any] = {"class_names": tuple(class_names), "warmup_steps": 0,
                                  "augment": False, "rpn_conv_channels": 512}
        fields = set(CastingConfig.field_names())
        attrs = self.to_dict()
        for attr, value in attrs.items():
            target = MAPPING.get(attr)
            if target is None and attr.lower() in fields and attr not in IGNORED:
                target = attr.lower()
            if target is None or value is None:
                continue
            values[target] = _plain(value)
        side = int(self.IMAGE_SHAPE[0])
        values["image_size"] = side
        mask_shape = values.get("mask_shape")
        if isinstance(mask_shape, (list, tuple)):
            if len(set(mask_shape)) != 1:
                raise ConfigError(f"MASK_SHAPE must be square, not {mask_shape}")
            values["mask_shape"] = int(mask_shape[0])
        if side % 64:
            raise ConfigError(
                f"IMAGE_MAX_DIM = {side}: must be a multiple of 64 (matterport requires the same)"
            )
        values["rpn_anchor_scales"] = tuple(int(s) for s in values["rpn_anchor_scales"])
        values["rpn_anchor_ratios"] = tuple(float(r) for r in values["rpn_anchor_ratios"])
        for key in ("mean_pixel", "rpn_bbox_std_dev", "bbox_std_dev"):
            values[key] = tuple(float(v) for v in values[key])
        values["train_bn"] = bool(values.get("train_bn") or False)
        return CastingConfig(**values)


def _plain(value: Any) -> Any:
    """numpy arrays and scalars -> Python lists and numbers (for the dataclass / JSON)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value
