"""matterport's `model` module (`from mrcnn import model as modellib`) on our Keras 3 model.

    model = modellib.MaskRCNN(mode="training", config=config, model_dir=MODEL_DIR)
    model.load_weights(COCO_MODEL_PATH, by_name=True,
                       exclude=["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"])
    model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE,
                epochs=1, layers="heads")
    model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE / 10,
                epochs=2, layers="all")

    model = modellib.MaskRCNN(mode="inference", config=inference_config, model_dir=MODEL_DIR)
    model.load_weights(model.find_last(), by_name=True)
    r = model.detect([image], verbose=1)[0]     # rois, class_ids, scores, masks [H, W, N]

The network is `casting.model.MaskRCNN` (reachable as `.keras_model`); the user's
`utils.Dataset` is fed to it through a tf.data generator that resizes images and masks the
way the model's own pipeline does. Checkpoints are written in matterport's `.h5` layout and
naming (`<model_dir>/<name><YYYYmmddTHHMM>/mask_rcnn_<name>_<epoch>.h5`), so `find_last()`,
continuing from the last epoch and going back to matterport all work as before.
"""

from __future__ import annotations

import datetime
import errno
import logging
import os
import re

import numpy as np

from mrcnn import utils
from mrcnn._graph import (  # noqa: F401  matterport's graph helpers
    build_rpn_targets, compute_backbone_shapes, denorm_boxes_graph, norm_boxes_graph,
    parse_image_meta_graph,
)
from mrcnn._inspect import InspectMixin, network_class
from mrcnn.data import (  # matterport's names in mrcnn.model
    IMGAUG_NUMPY2_NOTE, _augment, compose_image_meta, data_generator, imgaug_status,
    load_image_gt, make_tf_dataset, mold_image, parse_image_meta, unmold_image,
)

logger = logging.getLogger(__name__)

# matterport's layer groups as regular expressions over layer names (re.fullmatch).
LAYER_REGEX = {
    "heads": r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "5+": r"(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "all": ".*",
}

__all__ = [
    "MaskRCNN", "LAYER_REGEX", "log", "utils", "IMGAUG_NUMPY2_NOTE", "imgaug_status",
    "mold_image", "unmold_image", "compose_image_meta", "parse_image_meta", "load_image_gt",
    "data_generator", "make_tf_dataset", "build_rpn_targets", "compute_backbone_shapes",
    "parse_image_meta_graph", "norm_boxes_graph", "denorm_boxes_graph",
]


def log(text, array=None):
    """Print `text`, and the shape / range of `array` if given (matterport's helper)."""
    if array is not None:
        text = text.ljust(25)
        array = np.asarray(array)
        if array.size:
            text += f"shape: {str(array.shape):20}  min: {array.min():10.5f}  max: {array.max():10.5f}"
        else:
            text += f"shape: {str(array.shape):20}  min: {'':10}  max: {'':10}"
        text += f"  {array.dtype}"
    print(text)


# ------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------
class _Checkpoint:
    """Keras callback: write matterport-layout weights at the end of each epoch."""

    def __new__(cls, owner):
        import keras

        class Checkpoint(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                path = owner.checkpoint_path.format(epoch=epoch + 1)
                from casting.model.weights import save_matterport_h5

                save_matterport_h5(owner.keras_model, path)
                owner.epoch = epoch + 1

        return Checkpoint()


class MaskRCNN(InspectMixin):
    """matterport's `MaskRCNN` wrapper: `train`, `detect`, `load_weights`, `find_last`, and
    the inspection methods (`run_graph`, `mold_inputs`, `get_anchors`...: mrcnn/_inspect.py)."""

    def __init__(self, mode, config, model_dir):
        assert mode in ["training", "inference"], f"mode must be training or inference, not {mode!r}"
        self.mode = mode
        self.config = config
        self.model_dir = model_dir
        self.class_names = None
        self.weights_loaded = False
        self.casting_config = config.to_casting_config()
        self.keras_model = network_class()(self.casting_config)
        self.set_log_dir()

    # ---- logs, checkpoints ---------------------------------------------------------------
    def _name(self):
        return (self.config.NAME or "mask_rcnn").lower()

    def set_log_dir(self, model_path=None):
        """Choose the log folder and the epoch to continue from (from a checkpoint path
        written by this wrapper or by matterport)."""
        self.epoch = 0
        now = datetime.datetime.now()
        if model_path:
            pattern = (r".*[/\\][\w-]+(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})[/\\]"
                       r"mask\_rcnn\_[\w-]+(\d{4})\.h5")
            m = re.match(pattern, str(model_path).replace(os.sep, "/"))
            if m:
                now = datetime.datetime(*[int(m.group(i)) for i in range(1, 6)])
                self.epoch = int(m.group(6))
                print(f"Re-starting from epoch {self.epoch}")
        self.log_dir = os.path.join(self.model_dir, f"{self._name()}{now:%Y%m%dT%H%M}")
        self.checkpoint_path = os.path.join(
            self.log_dir, f"mask_rcnn_{self._name()}_*epoch*.h5"
        ).replace("*epoch*", "{epoch:04d}")

    def find_last(self):
        """The last checkpoint of the most recent log folder of this config's NAME."""
        try:
            dir_names = next(os.walk(self.model_dir))[1]
        except StopIteration:
            dir_names = []
        key = self._name()
        dir_names = sorted(d for d in dir_names if d.startswith(key))
        if not dir_names:
            raise FileNotFoundError(
                errno.ENOENT, f"Could not find model directory under {self.model_dir}")
        dir_name = os.path.join(self.model_dir, dir_names[-1])
        checkpoints = sorted(f for f in os.listdir(dir_name)
                             if f.startswith("mask_rcnn") and f.endswith(".h5"))
        if not checkpoints:
            raise FileNotFoundError(errno.ENOENT, f"Could not find weight files in {dir_name}")
        return os.path.join(dir_name, checkpoints[-1])

    def get_imagenet_weights(self):
        """Path of the Keras ImageNet ResNet no-top file (cached or downloaded by Keras);
        load it with `load_weights(path, by_name=True)`."""
        from casting.model.weights import _find_imagenet_file

        return _find_imagenet_file(self.casting_config.backbone, None)

    # ---- weights -------------------------------------------------------------------------
    def load_weights(self, filepath, by_name=False, exclude=None):
        """Load matterport `.h5` files (by layer name), the Keras ImageNet ResNet file, our
        model folders / `.weights.h5` files / `model.tar.gz`, locally or on S3.

        With by_name=False every layer of the file must fit (as in matterport, where a
        topological load fails on another number of classes); with by_name=True layers
        whose shapes differ are skipped and listed. `exclude`: layer names not to load."""
        from casting.model.weights import load_init_weights

        report = load_init_weights(self.keras_model, filepath, exclude=exclude or ())
        mismatched = [(n, r) for n, r in report.skipped
                      if r != "excluded" and not r.startswith("not a backbone layer")]
        if not by_name and mismatched:
            raise ValueError(
                f"{filepath}: layers do not fit this model: {mismatched[:3]}; load with "
                "by_name=True and exclude the class-dependent heads ('mrcnn_class_logits', "
                "'mrcnn_bbox_fc', 'mrcnn_bbox', 'mrcnn_mask')"
            )
        logger.info(report.summary())
        self.weights_loaded = self.weights_loaded or bool(report.loaded)
        self.set_log_dir(filepath)
        return report

    # ---- training ------------------------------------------------------------------------
    def set_trainable(self, layer_regex, verbose=0):
        """Make the layers whose matterport name fully matches `layer_regex` (or a group
        name) trainable and freeze the others; frozen BatchNorm stays frozen unless
        TRAIN_BN."""
        self.keras_model.set_trainable_layers(layer_regex)
        if verbose > 0:
            for name, layer in self.keras_model.named_layers().items():
                if layer.trainable:
                    log(f"{name:20}   ({type(layer).__name__})")

    def compile(self, learning_rate, momentum):
        import keras

        clip = float(self.config.GRADIENT_CLIP_NORM or 0) or None
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum,
                                         global_clipnorm=clip)
        self.keras_model.compile(optimizer=optimizer)

    def train(self, train_dataset, val_dataset, learning_rate, epochs, layers,
              augmentation=None, custom_callbacks=None, no_augmentation_sources=None):
        """Train up to epoch `epochs` (a total, as in matterport: a second call with a
        larger number continues where the first stopped).

        layers: "heads", "3+", "4+", "5+", "all" or a regular expression over layer names.
        augmentation: a callable (image, masks) -> (image, masks) or an imgaug augmenter."""
        assert self.mode == "training", "Create model in training mode."
        if augmentation is not None and not callable(augmentation) and not (
                type(augmentation).__module__ or "").startswith("imgaug"):
            _augment(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 1), bool), augmentation)
        if getattr(train_dataset, "class_names", None):
            self.class_names = list(train_dataset.class_names)
        self.set_trainable(layers)
        # In-graph sampling (anchors, ROIs) uses TF's random ops: seed them from NumPy's
        # global RNG, so a script that calls np.random.seed(...) trains repeatably.
        import tensorflow as tf

        tf.random.set_seed(int(np.random.randint(0, 2**31 - 1)))
        train_ds = make_tf_dataset(train_dataset, self.config, shuffle=True,
                                   augmentation=augmentation)
        val_ds = None
        if val_dataset is not None and int(self.config.VALIDATION_STEPS) > 0 and _can_validate(
                self.keras_model):
            val_ds = make_tf_dataset(val_dataset, self.config, shuffle=True)
        os.makedirs(self.log_dir, exist_ok=True)
        callbacks = [_Checkpoint(self)] + list(custom_callbacks or [])
        log(f"\nStarting at epoch {self.epoch}. LR={learning_rate}\n")
        log(f"Checkpoint Path: {self.checkpoint_path}")
        self.compile(learning_rate, self.config.LEARNING_MOMENTUM)
        if not self.weights_loaded and not self.casting_config.train_bn:
            # Random initialisation with frozen BatchNorm: the moving statistics (0, 1)
            # would leave the ResNet unnormalised; set them from one training batch first.
            log("No weights loaded: calibrating BatchNorm statistics on one training batch")
            self.keras_model.calibrate_batchnorm(next(iter(train_ds)))
            self.weights_loaded = True
        if self.epoch >= epochs:
            log(f"Already at epoch {self.epoch} >= {epochs}: nothing to train")
            return None
        history = self.keras_model.fit(
            train_ds,
            initial_epoch=self.epoch,
            epochs=epochs,
            steps_per_epoch=int(self.config.STEPS_PER_EPOCH),
            callbacks=callbacks,
            validation_data=val_ds,
            validation_steps=int(self.config.VALIDATION_STEPS) if val_ds is not None else None,
            shuffle=False,
            verbose=2,
        )
        self.epoch = max(self.epoch, epochs)
        return history

    # ---- inference -----------------------------------------------------------------------
    def detect(self, images, verbose=0):
        """Detections for a list of RGB images (any sizes): a list of dicts with `rois`
        [N, (y1, x1, y2, x2)] int32, `class_ids` [N], `scores` [N], `masks` [H, W, N] bool."""
        assert self.mode == "inference", "Create model in inference mode."
        if verbose:
            log(f"Processing {len(images)} images")
            for image in images:
                log("image", image)
        detections = self.keras_model.detect(list(images))
        return [_matterport_result(det, *np.asarray(image).shape[:2])
                for image, det in zip(images, detections)]

    # ---- export to our container's format ------------------------------------------------
    def save_model_dir(self, path, class_names=None, saved_model=True):
        """Write our model folder (config.json, model.weights.h5, saved_model/) for
        `serve.py`, with the dataset's class names when known."""
        from casting.model import save_model_dir

        names = class_names or self.class_names
        if names is not None and hasattr(self.keras_model, "config"):
            names = [n for n in names if n not in ("BG", "background")]
            if len(names) == self.casting_config.num_classes - 1:
                self.keras_model.config = self.casting_config.replace(class_names=tuple(names))
        return save_model_dir(self.keras_model, path, saved_model=saved_model)


def _matterport_result(det, height, width):
    """One image's `casting` detections -> matterport's dict (masks [H, W, N])."""
    masks = np.asarray(det["masks"]).astype(bool)
    masks = np.transpose(masks, (1, 2, 0)) if masks.size else np.zeros((height, width, 0), bool)
    boxes = np.asarray(det["boxes"], np.float32).reshape(-1, 4)
    return {
        "rois": np.round(boxes).astype(np.int32),
        "class_ids": np.asarray(det["class_ids"], np.int32).reshape(-1),
        "scores": np.asarray(det["scores"], np.float32).reshape(-1),
        "masks": masks,
    }


def _can_validate(model) -> bool:
    return bool(getattr(model, "supports_validation", True))
