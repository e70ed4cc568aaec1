"""Hyperparameters for ``train.py``, parsed tolerantly from what SageMaker sends.

The ``sagemaker-training`` toolkit turns each hyperparameter into ``--name value``. The
value may arrive as:

* a plain string or number as text: ``--epochs 3``, ``--learning-rate 1e-3``;
* a JSON-encoded string (notebooks that ``json.dumps`` values first): ``--epochs "\\"3\\""``;
* ``True`` / ``False`` (Python's ``str(bool)``);
* JSON (``[{"epochs": 2}]``) or a Python repr (``{'a': 1}``, the generic ``Estimator``
  sends ``str(v)``).

Both ``--learning-rate`` and ``--learning_rate`` spellings are accepted (``--name=value``
too). An unknown name is an error that lists the valid ones. ``python train.py --help``
documents every hyperparameter.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from casting.errors import Explained
from casting.hparam_values import (  # noqa: F401 - the converters, importable from here too
    to_bool, to_float, to_int, to_str, to_optional_str, to_str_list, to_float_pair, to_dict,
    to_policy, to_schedule,
)


class HyperparameterError(Explained, ValueError):
    """A hyperparameter name or value is not valid."""


# ---------------------------------------------------------------------------------------
# the hyperparameters
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    name: str  # with underscores
    convert: Callable[[Any], Any]
    default: Any
    help: str
    group: str = "training"


def _s(name, convert, default, help, group="training") -> Spec:
    return Spec(name, convert, default, help, group)


LAYER_CHOICES = "heads, 3+, 4+, 5+, all"

SPECS: tuple[Spec, ...] = (
    # data ------------------------------------------------------------------------------
    _s("train", to_optional_str, None,
       "Training data folder (Supervisely or COCO, detected). Default: $SM_CHANNEL_TRAIN; "
       "neither given -> the embedded synthetic dataset.", "data"),
    _s("validation", to_optional_str, None,
       "Validation data folder. Default: $SM_CHANNEL_VALIDATION; neither given -> a "
       "deterministic split of the training data (--val-fraction).", "data"),
    _s("weights", to_optional_str, None,
       "Folder of the optional 'weights' channel (default $SM_CHANNEL_WEIGHTS): our model "
       "folder or one .h5 file, used as --init-weights when that is not given.", "data"),
    _s("class_names", to_str_list, None,
       "Class names in id order (JSON list or comma-separated). Default: the dataset's.",
       "data"),
    _s("val_fraction", to_float, 0.2,
       "Share of the training images held out for validation when there is no "
       "validation channel.", "data"),
    _s("synthetic_images", to_int, 24,
       "Number of images in the embedded synthetic dataset (used when no data is given).",
       "data"),
    _s("synthetic_good_fraction", to_float, 0.0,
       "Share of the synthetic parts drawn without defects (tagged good).", "data"),
    _s("on_data_error", to_str, "raise",
       "'raise': a broken dataset stops training with the check report; 'skip': leave out "
       "broken images with a warning.", "data"),
    # model -----------------------------------------------------------------------------
    _s("init_weights", to_str, "imagenet",
       "Initial weights: none | imagenet (Keras ResNet50, from the Keras cache or "
       "downloaded) | a path or s3:// URI of our model folder or .weights.h5 | a matterport "
       ".h5 (loaded by layer name; mismatched heads skipped and listed).", "model"),
    _s("image_size", to_int, None, "Square input size in pixels (multiple of 64). Default 512.",
       "model"),
    _s("config", to_dict, {},
       "Any other Config fields as a JSON object / dict, e.g. "
       "'{\"detection_min_confidence\": 0.5}'.", "model"),
    # schedule --------------------------------------------------------------------------
    _s("epochs", to_int, None, "Number of epochs (ignored when --schedule is given). "
       "Default 10."),
    _s("steps_per_epoch", to_int, None, "Training steps (batches) per epoch. Default 100."),
    _s("validation_steps", to_int, None, "Validation batches after each epoch. Default 10."),
    _s("batch_size", to_int, None, "Images per batch (per replica). Default 2."),
    _s("learning_rate", to_float, None, "Base learning rate (SGD). Default 0.01."),
    _s("momentum", to_float, None, "SGD momentum. Default 0.9."),
    _s("weight_decay", to_float, None, "L2 weight decay: the model adds 0.5 * wd * sum of "
       "squared conv/dense kernels to its loss (coupled, through the gradient, as in "
       "matterport; not on biases or normalisation parameters). Default 1e-4."),
    _s("gradient_clip_norm", to_float, None, "Clip gradients to this global norm "
       "(0: off). Default 5.0."),
    _s("warmup_steps", to_int, None, "Linear learning-rate warm-up over the first N steps, "
       "at most a tenth of the run. Default 100."),
    _s("scale_learning_rate", to_bool, None, "With several replicas (GPUs or instances), "
       "multiply every learning rate by their number, as the global batch is --batch-size "
       "x replicas. Default False."),
    _s("layers", to_str, None, f"Layers to train without a schedule: {LAYER_CHOICES}. "
       "Default all."),
    _s("schedule", to_schedule, [],
       "Training stages, run in order, e.g. '[{\"epochs\": 20, \"layers\": \"heads\", "
       "\"lr\": 0.001}, {\"epochs\": 40, \"layers\": \"all\", \"lr\": 0.0001}]'. "
       "'epochs' is the number of epochs in that stage; 'layers' and 'lr' default to "
       "--layers and --learning-rate."),
    _s("augment", to_bool, None, "Random flips / photometric augmentation. Default True."),
    _s("lr_decay", to_str, None, "Learning-rate decay over the run after the warm-up: "
       "'cosine' (to 0 at the last step) or 'none' (constant in each stage). Default cosine."),
    _s("norm", to_str, None, "Normalisation in the backbone and heads: 'batch' (BatchNorm, "
       "frozen unless train_bn) or 'group' (GroupNorm, 32 groups, trained; for training "
       "from random weights). Default: group with --init-weights none, else batch."),
    _s("precision", to_str, "auto", "What the layers compute in: float32, mixed_float16 "
       "(float16 with dynamic loss scaling), mixed_bfloat16, or auto: bfloat16 on a GPU of "
       "compute capability 8.0 or later (A10G, A100, L4, H100), float16 on 7.x (T4, V100), "
       "float32 otherwise and without a GPU. Variables, losses, boxes and NMS stay float32; "
       "the model folder serves in float32 (docs/training.md, Precision)."),
    _s("repeat_threshold", to_float, None, "Repeat-factor sampling: images holding a class "
       "found in fewer than this fraction of the images are repeated (LVIS rule, "
       "sqrt(t / f)); 0 turns it off. Default 0."),
    _s("mask_rois_per_image", to_int, None, "The mask head trains on at most N of an "
       "image's positive ROIs, a random subset (0: all, up to train_rois_per_image x "
       "roi_positive_ratio = 32). Default 0."),
    _s("train_scale_range", to_float_pair, None, "Scale jitter in training: each image is "
       "resized to image-size x s, s uniform in [min, max], e.g. '[0.5, 1.0]'. "
       "Default [1, 1] (off)."),
    _s("train_crop_size", to_int, None, "Train on random crops of this side (a multiple of "
       "64, at most --image-size) of the resized image; inference still sees the whole "
       "image at --image-size. 0: the whole image. With --image-size 1024 and crops of 512 "
       "a step costs about what a 512-px step does while objects keep twice the pixels. "
       "Default 0."),
    _s("train_native_scale", to_bool, None, "Large frames: train on crops at the images' "
       "own pixel size (times the scale jitter) instead of resizing them to --image-size; "
       "the crop is --train-crop-size or --image-size. Its final evaluation runs by tiles; "
       "serve it with tile=on. Default False."),
    _s("train_crop_object_fraction", to_float, None, "Share of training crops placed to "
       "hold a chosen object (the rest anywhere). Default 0.75."),
    _s("train_crop_min_visible", to_float, None, "An object a training crop cuts is "
       "dropped when less than this fraction of it is inside. Default 0.1."),
    _s("seed", to_int, None, "Random seed. Default 42."),
    _s("deterministic", to_bool, False, "Bit-for-bit repeatable training on one machine "
       "(TensorFlow's deterministic op kernels; slower). Without it two runs of the same "
       "seed agree to float rounding only."),
    # checkpoints -----------------------------------------------------------------------
    _s("checkpoint_every_steps", to_int, None, "Also checkpoint every N steps "
       "(0: only at epoch ends). Default 200.", "checkpoints"),
    _s("keep_checkpoints", to_int, None, "Keep the newest K checkpoints. Default 3.",
       "checkpoints"),
    _s("resume", to_bool, True, "Resume from the newest valid checkpoint in "
       "--checkpoint-dir.", "checkpoints"),
    # progress --------------------------------------------------------------------------
    _s("log_every_steps", to_int, 0, "Also print a progress line (step, s/step, losses) "
       "every N steps (0: none). Where stdout is a terminal Keras' progress bar shows too; "
       "elsewhere (CloudWatch) there is one line per epoch.", "checkpoints"),
    # evaluation ------------------------------------------------------------------------
    _s("eval_every_epochs", to_int, 0, "Also run COCO evaluation every N epochs "
       "(0: only after training).", "evaluation"),
    _s("eval_max_images", to_int, 0, "Evaluate on at most N validation images (0: all).",
       "evaluation"),
    _s("eval_min_confidence", to_float, 0.05, "Score threshold of the detections COCO "
       "evaluation scores (COCO AP needs the low-score ones too; the overlays and the "
       "served model use detection_min_confidence).", "evaluation"),
    _s("policy", to_policy, None, "Acceptance policy (casting.qc.policy): a JSON object or "
       "the path of a JSON file. Saved as policy.json in the model folder; part-level "
       "catch and false-reject rates are in evaluation.json. Default: any defect scoring "
       ">= 0.5 rejects.", "evaluation"),
    _s("overlays", to_int, 4, "Number of prediction overlays (PNG) written to the output "
       "data folder.", "evaluation"),
    _s("saved_model", to_bool, True, "Also export a TF SavedModel into the model folder "
       "(False: weights and config only; faster).", "evaluation"),
    # paths -----------------------------------------------------------------------------
    _s("model_dir", to_optional_str, None, "Where the trained model goes. Default "
       "$SM_MODEL_DIR. An s3:// value (the TensorFlow estimator's) is ignored.", "paths"),
    _s("output_data_dir", to_optional_str, None, "evaluation.json, history.csv, overlays. "
       "Default $SM_OUTPUT_DATA_DIR.", "paths"),
    _s("checkpoint_dir", to_optional_str, None, "Checkpoints. Default /opt/ml/checkpoints.",
       "paths"),
    _s("tensorboard_dir", to_optional_str, None, "TensorBoard logs. Default "
       "/opt/ml/output/tensorboard.", "paths"),
)

SPEC_BY_NAME = {spec.name: spec for spec in SPECS}

# Hyperparameter names that map 1:1 onto Config fields.
CONFIG_FIELDS = (
    "image_size", "epochs", "steps_per_epoch", "validation_steps", "batch_size",
    "learning_rate", "momentum", "weight_decay", "gradient_clip_norm", "warmup_steps",
    "scale_learning_rate", "layers", "schedule", "augment", "seed", "checkpoint_every_steps", "keep_checkpoints",
    "class_names", "lr_decay", "norm", "repeat_threshold", "mask_rois_per_image",
    "train_scale_range", "train_crop_size", "train_native_scale",
    "train_crop_object_fraction", "train_crop_min_visible",
)


def valid_names() -> list[str]:
    return [spec.name for spec in SPECS]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage and exit(2)
        raise HyperparameterError(f"{message}; valid hyperparameters: {', '.join(valid_names())}")


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Train Mask R-CNN (ResNet50-FPN) on casting defects, SageMaker "
        "script mode. Every option accepts '-' or '_' in its name; values may be JSON-"
        "encoded strings, True/False, or Python reprs, as SageMaker sends them.",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups: dict[str, Any] = {}
    for spec in SPECS:
        group = groups.get(spec.group)
        if group is None:
            group = groups[spec.group] = parser.add_argument_group(spec.group)
        flags = [f"--{spec.name.replace('_', '-')}"]
        if "_" in spec.name:
            flags.append(f"--{spec.name}")
        default_text = "" if spec.default in (None, [], {}) else f" (default: {spec.default})"
        group.add_argument(*flags, dest=spec.name, default=None, metavar="VALUE",
                           help=spec.help + default_text)
    return parser


@dataclass
class Hyperparameters:
    values: dict[str, Any]
    given: frozenset[str]  # names given explicitly on the command line

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def config_overrides(self) -> dict[str, Any]:
        """Config field changes: ``--config`` first, then the explicit simple flags."""
        out = dict(self.values.get("config") or {})
        for name in CONFIG_FIELDS:
            if name in self.given:
                out[name] = self.values[name]
        return out


def parse_hyperparameters(argv: Sequence[str] | None = None) -> Hyperparameters:
    """Parse and convert; raises HyperparameterError naming the option and valid names."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        names = [u.split("=", 1)[0] for u in unknown if u.startswith("-")] or unknown
        raise HyperparameterError(
            f"unknown hyperparameter(s) {names}; valid names: {', '.join(valid_names())} "
            "(either '-' or '_' spelling)"
        )
    values: dict[str, Any] = {}
    given = set()
    for spec in SPECS:
        raw = getattr(namespace, spec.name)
        if raw is None:
            values[spec.name] = spec.default
            continue
        given.add(spec.name)
        try:
            values[spec.name] = spec.convert(raw)
        except ValueError as exc:
            flag = "--" + spec.name.replace("_", "-")
            raise HyperparameterError(f"{flag}: {exc}") from None
    from casting.precision import CHOICES as PRECISION_CHOICES

    values["precision"] = str(values["precision"]).lower()
    if values["precision"] not in PRECISION_CHOICES:
        raise HyperparameterError(f"--precision must be one of {list(PRECISION_CHOICES)}, "
                                  f"not {values['precision']!r}")
    if values["on_data_error"] not in ("raise", "skip"):
        raise HyperparameterError(
            f"--on-data-error must be 'raise' or 'skip', not {values['on_data_error']!r}")
    if not 0.0 <= values["synthetic_good_fraction"] <= 1.0:
        raise HyperparameterError("--synthetic-good-fraction must be in [0, 1]")
    if not 0.0 <= values["val_fraction"] < 1.0:
        raise HyperparameterError("--val-fraction must be in [0, 1)")
    if not 0.0 <= values["eval_min_confidence"] < 1.0:
        raise HyperparameterError("--eval-min-confidence must be in [0, 1)")
    for name in ("synthetic_images", "eval_every_epochs", "eval_max_images", "overlays",
                 "log_every_steps"):
        if values[name] < 0:
            raise HyperparameterError(f"--{name.replace('_', '-')} must be >= 0")
    return Hyperparameters(values=values, given=frozenset(given))
