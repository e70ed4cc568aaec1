"""One typed configuration for the model and its training, with a JSON round trip.

`Config` is a frozen dataclass. Build one with keyword arguments, change it with
`config.replace(...)`, save it with `to_json` / `save`, read it back with `from_json` /
`load`. Unknown keys are an error that lists the valid names, so a typo in a saved file or a
hyperparameter never passes silently.

Defaults suit 512x512 casting photos whose defects are small (median areas 150-500 px):
the smallest anchor is 16 px on the stride-4 level.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from casting.files import write_atomic
from casting.precision import PRECISIONS

DEFAULT_CLASS_NAMES = ("disk", "holes", "chipping", "deburring")
LAYER_GROUPS = ("heads", "3+", "4+", "5+", "all")
NORMS = ("batch", "group")
# the parts casting.model.xla can compile
XLA_PARTS = ("backbone", "box_head")
LR_DECAYS = ("none", "cosine")
LOSS_NAMES = (
    "rpn_class_loss",
    "rpn_bbox_loss",
    "mrcnn_class_loss",
    "mrcnn_bbox_loss",
    "mrcnn_mask_loss",
)


class ConfigError(ValueError):
    """A configuration value or key is not valid."""


def _default_loss_weights() -> dict[str, float]:
    return {name: 1.0 for name in LOSS_NAMES}


@dataclass(frozen=True)
class Config:
    # ---- data / classes -------------------------------------------------------------
    class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES
    image_size: int = 512
    max_gt_instances: int = 40
    mean_pixel: tuple[float, float, float] = (123.7, 116.8, 103.9)

    # ---- backbone + FPN ------------------------------------------------------------
    backbone: str = "resnet50"
    fpn_channels: int = 256
    train_bn: bool = False
    # "batch": BatchNorm (frozen unless train_bn); "group": GroupNorm (32 groups) in the
    # backbone and heads, trained, for training from random weights at small batches.
    norm: str = "batch"
    # The dtype policy the layers compute in (casting.precision): float32, mixed_float16
    # (with loss scaling) or mixed_bfloat16. train.py's --precision auto picks it by GPU.
    precision: str = "float32"
    # Parts compiled by XLA (XLA_PARTS: "backbone", "box_head"); none by
    # default: on CPU neither pays (docs/training.md, "Precision and XLA").
    xla: tuple[str, ...] = ()

    # ---- anchors + RPN ---------------------------------------------------------------
    backbone_strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    rpn_anchor_scales: tuple[int, ...] = (16, 32, 64, 128, 256)
    rpn_anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_conv_channels: int = 256
    rpn_train_anchors_per_image: int = 256
    rpn_positive_iou: float = 0.7
    rpn_negative_iou: float = 0.3
    rpn_nms_threshold: float = 0.7
    rpn_bbox_std_dev: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    pre_nms_limit: int = 6000
    post_nms_rois_training: int = 2000
    post_nms_rois_inference: int = 1000

    # ---- ROI heads ---------------------------------------------------------------------
    # 128 ROIs a image, a quarter of them positive: the mask head (the costliest part of a
    # training step at small inputs) trains on at most 32 per image.
    train_rois_per_image: int = 128
    roi_positive_ratio: float = 0.25
    # The mask head trains on at most this many of an image's positive ROIs, a random subset
    # (0: all of them). Its four 14x14 convolutions per ROI cost more than the backbone at
    # small inputs; the box head still sees every sampled ROI.
    mask_rois_per_image: int = 0
    roi_positive_iou: float = 0.5
    # Moved copies of each ground-truth box added to the ROI candidates (0: none): a 12-px
    # chip gets about two proposals at IoU >= 0.5, the part a dozen.
    roi_gt_jitter: int = 0
    # Weight of an object's ROIs against background ones in the box head's class loss.
    roi_foreground_weight: float = 1.0
    pool_size: int = 7
    mask_pool_size: int = 14
    mask_shape: int = 28
    fc_layers_size: int = 1024
    bbox_std_dev: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)

    # ---- detection -------------------------------------------------------------------
    detection_max_instances: int = 100
    detection_min_confidence: float = 0.7
    detection_nms_threshold: float = 0.3

    # ---- training ----------------------------------------------------------------------
    batch_size: int = 2
    epochs: int = 10
    steps_per_epoch: int = 100
    validation_steps: int = 10
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    gradient_clip_norm: float = 5.0
    warmup_steps: int = 100
    # "cosine": the learning rate falls to 0 over the run (after the warm-up's linear rise);
    # "none": constant within each schedule stage.
    lr_decay: str = "cosine"
    # Several replicas: multiply the learning rates by their number (linear scaling rule;
    # the global batch is batch_size x replicas).
    scale_learning_rate: bool = False
    layers: str = "all"
    loss_weights: dict[str, float] = field(default_factory=_default_loss_weights)
    schedule: tuple[dict[str, Any], ...] = ()
    augment: bool = True
    # Scale jitter and crops (training only). Each training image is resized so that its
    # longer side is image_size x s, s uniform in train_scale_range, then a random
    # train_crop_size square of it is the training input (0: the whole image_size square,
    # padded). Inference always sees the whole image at image_size. So image_size 1024
    # with crops of 512 trains at a 512-px step's cost on objects twice their 512-px size.
    train_scale_range: tuple[float, float] = (1.0, 1.0)
    train_crop_size: int = 0
    # Crops of large frames at native scale: the training image keeps its own pixel size
    # (times the scale jitter) and a train_crop_size (else image_size) square is cut from
    # it; inference then runs by tiles of image_size (casting.tiling), which reach the model
    # at the scale it trained on. A crop holds a chosen object with probability
    # train_crop_object_fraction (else it is placed anywhere: some crops hold nothing);
    # an object the crop cuts is dropped below train_crop_min_visible of its area.
    train_native_scale: bool = False
    train_crop_object_fraction: float = 0.75
    train_crop_min_visible: float = 0.1
    # Repeat-factor sampling threshold (casting.data.sampling); 0 = every image once a pass.
    repeat_threshold: float = 0.0
    seed: int = 42
    checkpoint_every_steps: int = 200
    keep_checkpoints: int = 3

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        # Normalise sequences that arrive as lists (e.g. from JSON) to tuples.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                if f.name == "schedule":
                    value = tuple(dict(stage) for stage in value)
                else:
                    value = tuple(value)
                object.__setattr__(self, f.name, value)
        if self.loss_weights is not None:
            merged = _default_loss_weights()
            unknown = set(self.loss_weights) - set(LOSS_NAMES)
            if unknown:
                raise ConfigError(
                    f"unknown loss_weights keys {sorted(unknown)}; valid: {list(LOSS_NAMES)}"
                )
            merged.update({k: float(v) for k, v in self.loss_weights.items()})
            object.__setattr__(self, "loss_weights", merged)
        self.validate()

    # ---- derived -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes including the background (index 0)."""
        return len(self.class_names) + 1

    @property
    def anchors_per_location(self) -> int:
        return len(self.rpn_anchor_ratios)

    # ---- checks --------------------------------------------------------------------------
    def validate(self) -> None:
        if not self.class_names:
            raise ConfigError("class_names must name at least one class")
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"class_names has duplicates: {list(self.class_names)}")
        if "BG" in self.class_names or "background" in self.class_names:
            raise ConfigError("class_names must not include the background class")
        if self.backbone not in ("resnet50", "resnet101"):
            raise ConfigError(f"backbone must be resnet50 or resnet101, not {self.backbone!r}")
        if self.lr_decay not in LR_DECAYS:
            raise ConfigError(f"lr_decay must be one of {LR_DECAYS}, not {self.lr_decay!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, not {self.norm!r}")
        unknown = [part for part in self.xla if part not in XLA_PARTS]
        if unknown:
            raise ConfigError(f"xla parts must be among {XLA_PARTS}, not {unknown}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, not {self.precision!r}"
                              " (train.py's --precision also takes auto)")
        if self.image_size % 64 != 0 or self.image_size < 64:
            raise ConfigError(f"image_size must be a multiple of 64 (>= 64), not {self.image_size}")
        if self.train_crop_size and (self.train_crop_size % 64 != 0
                                     or not 64 <= self.train_crop_size <= self.image_size):
            raise ConfigError(f"train_crop_size must be 0 (no crop) or a multiple of 64 from 64 "
                              f"to image_size ({self.image_size}), not {self.train_crop_size}")
        for name in ("train_crop_object_fraction", "train_crop_min_visible"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], not {getattr(self, name)}")
        if (len(self.train_scale_range) != 2
                or not 0.0 < self.train_scale_range[0] <= self.train_scale_range[1] <= 4.0):
            raise ConfigError(f"train_scale_range must be [min, max] with 0 < min <= max <= 4, "
                              f"not {list(self.train_scale_range)}")
        if len(self.rpn_anchor_scales) != len(self.backbone_strides):
            raise ConfigError("rpn_anchor_scales needs one scale per pyramid level (P2-P6)")
        if not 0.0 < self.roi_positive_ratio <= 1.0:
            raise ConfigError("roi_positive_ratio must be in (0, 1]")
        if not self.roi_foreground_weight > 0.0:
            raise ConfigError(f"roi_foreground_weight must be > 0, not "
                              f"{self.roi_foreground_weight}")
        if self.roi_gt_jitter < 0:
            raise ConfigError(f"roi_gt_jitter must be >= 0 (0: none), not {self.roi_gt_jitter}")
        if self.mask_rois_per_image < 0:
            raise ConfigError(f"mask_rois_per_image must be >= 0 (0: every positive ROI), "
                              f"not {self.mask_rois_per_image}")
        if self.layers not in LAYER_GROUPS:
            raise ConfigError(f"layers must be one of {LAYER_GROUPS}, not {self.layers!r}")
        for stage in self.schedule:
            if "layers" in stage and stage["layers"] not in LAYER_GROUPS:
                raise ConfigError(f"schedule stage {stage}: layers must be one of {LAYER_GROUPS}")
            if "epochs" not in stage:
                raise ConfigError(f"schedule stage {stage} needs 'epochs'")
        if self.mask_shape != 2 * self.mask_pool_size:
            raise ConfigError("mask_shape must be twice mask_pool_size (one 2x deconvolution)")
        if self.repeat_threshold < 0:
            raise ConfigError(f"repeat_threshold must be >= 0, not {self.repeat_threshold}")
        for name in ("batch_size", "epochs", "steps_per_epoch", "max_gt_instances"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")

    # ---- round trip ----------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def replace(self, **changes: Any) -> "Config":
        self._check_keys(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [dict(v) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        cls._check_keys(data)
        return cls(**data)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON atomically (casting.files.write_atomic)."""
        write_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Config":
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        try:
            return cls.from_dict(data)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    @classmethod
    def _check_keys(cls, data: dict[str, Any]) -> None:
        valid = set(cls.field_names())
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(
                f"unknown config keys {unknown}; valid names: {sorted(valid)}"
            )
