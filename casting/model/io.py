"""The model folder: what train.py writes to SM_MODEL_DIR and serve.py loads.

    config.json          the Config (class names included)
    model.weights.h5     Keras weights
    saved_model/         TF SavedModel with a `serve` signature (optional)

Every file is written under a temporary name and renamed into place, the config last, so a
crash mid-save never leaves a folder that loads wrong weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

from casting.config import Config, ConfigError
from casting.files import atomic_path, replace_dir, reserve_space_for
from casting.finite import check_finite

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
SAVED_MODEL_DIR = "saved_model"


class ModelDirError(RuntimeError):
    """A model folder is missing a file or holds one that does not load."""


def export_saved_model(model, path: str) -> None:
    """Write a TF SavedModel with a `serve` endpoint:
    (images [B, S, S, 3] float32 RGB 0-255 padded, image_info [B, 4]) -> detections dict
    (boxes in model pixels, masks box-relative; see MaskRCNN.infer). A model trained in
    mixed precision is exported from a float32 copy of its weights, so the SavedModel
    computes in float32 and serves on any CPU."""
    import keras

    model = float32_twin(model)
    size = model.config.image_size
    conf = float(model.config.detection_min_confidence)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=lambda images, image_info: model.infer(images, image_info, conf),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images"),
                         tf.TensorSpec([None, 4], tf.float32, name="image_info")],
    )
    archive.write_out(path, verbose=False)


def float32_twin(model):
    """The model itself when it computes in float32, else a float32 copy of it (the
    weights are float32 under every policy: they copy exactly)."""
    if model.config.precision == "float32":
        return model
    from casting.model.maskrcnn import MaskRCNN

    twin = MaskRCNN(model.config.replace(precision="float32"))
    twin.set_weights(model.get_weights())
    return twin


def save_model_dir(model, path: str, saved_model: bool = True) -> None:
    """Write the model folder (see module docstring) into `path`, creating it if needed.
    Refuses (NonFiniteError, nothing written) when a weight is NaN or infinite."""
    check_finite(model.weights, f"the model folder {path}")
    os.makedirs(path, exist_ok=True)
    reserve_space_for(path, model.weights)  # a full disk fails here, cleanly
    with atomic_path(os.path.join(path, WEIGHTS_FILE), suffix=".weights.h5") as tmp_weights:
        model.save_weights(tmp_weights)
    if saved_model:
        staging = tempfile.mkdtemp(prefix=".tmp-saved-model-", dir=path)
        try:
            export_saved_model(model, staging)
            replace_dir(staging, os.path.join(path, SAVED_MODEL_DIR))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    model.config.save(os.path.join(path, CONFIG_FILE))


def load_model_dir(path: str, precision: str | None = "float32"):
    """Build a MaskRCNN from a model folder and load its weights.

    It computes in `precision`: float32 by default, whatever the model trained in (its
    config.json records that); None: the precision it trained in (mixed precision needs a
    GPU to pay)."""
    from casting.model.maskrcnn import MaskRCNN

    config_path = os.path.join(path, CONFIG_FILE)
    weights_path = os.path.join(path, WEIGHTS_FILE)
    for needed in (config_path, weights_path):
        if not os.path.isfile(needed):
            raise ModelDirError(f"{needed}: missing (a model folder holds {CONFIG_FILE} and "
                                f"{WEIGHTS_FILE})")
    try:
        config = Config.load(config_path)
    except ConfigError as exc:
        raise ModelDirError(str(exc)) from exc
    if precision is not None:
        config = config.replace(precision=precision)
    model = MaskRCNN(config)
    try:
        model.load_weights(weights_path)
    except Exception as exc:  # h5py / keras raise many types for a bad file
        raise ModelDirError(f"{weights_path}: cannot load weights ({exc})") from exc
    return model
