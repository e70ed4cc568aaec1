"""Our own weights: a model folder (`config.json` + `model.weights.h5`) or a `.weights.h5`
file, reloaded exactly when the shapes agree, else copied by layer name."""

from __future__ import annotations

import os
from typing import Any, Iterable

import h5py
import numpy as np

from casting.model.weights.by_name import (
    LoadReport, WeightsError, _ensure_built, _named_layers, _var_short_name,
    copy_weights_by_name,
)

def _is_keras3_weights(path: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return "layers" in f or "vars" in f
    except (OSError, ValueError):
        return False


def load_model_weights(
    model: Any,
    path: str | os.PathLike,
    exclude: Iterable[str] = (),
    report: LoadReport | None = None,
) -> LoadReport:
    """Load our own weights: a model folder (`config.json` + `model.weights.h5`) or a
    `.weights.h5` file. Same classes and backbone: an exact reload. Otherwise (another
    number of classes, or `exclude` given) the file is read into a model of its own config
    and copied by layer name."""
    path = os.fspath(path)
    if os.path.isdir(path):
        folder, weights_path = path, os.path.join(path, "model.weights.h5")
    else:
        folder, weights_path = os.path.dirname(path) or ".", path
    if not os.path.isfile(weights_path):
        raise WeightsError(f"{weights_path}: weights file not found")
    report = report or LoadReport(source=path)
    report.format = "casting model"
    config_path = os.path.join(folder, "config.json")
    own_config = getattr(model, "config", None)
    file_config = None
    if os.path.isfile(config_path):
        from casting.config import Config

        file_config = Config.load(config_path)
    exclude = list(exclude or ())
    shape_fields = ("num_classes", "backbone", "fpn_channels", "rpn_conv_channels",
                    "fc_layers_size", "pool_size", "mask_pool_size", "anchors_per_location")
    same = file_config is None or (
        own_config is not None
        and all(getattr(file_config, f) == getattr(own_config, f) for f in shape_fields)
    )
    if same and not exclude:
        _ensure_built(model)
        try:
            model.load_weights(weights_path)
        except Exception as exc:
            if file_config is None:
                raise WeightsError(
                    f"{weights_path}: does not fit this model ({exc}); to load it by layer "
                    "name put its config.json next to it"
                ) from exc
        else:
            report.loaded.extend(_named_layers(model))
            return report
    if file_config is None:
        raise WeightsError(f"{weights_path}: loading by layer name needs {config_path}")
    from casting.model import MaskRCNN

    source = MaskRCNN(file_config.replace(precision="float32"))  # only read from
    _ensure_built(source)
    try:
        source.load_weights(weights_path)
    except Exception as exc:
        raise WeightsError(f"{weights_path}: cannot be read with {config_path} ({exc})") from exc
    weights = {
        name: {_var_short_name(v): np.asarray(v.numpy()) for v in layer.weights}
        for name, layer in _named_layers(source).items()
        if layer.weights
    }
    copy_weights_by_name(
        model, weights, report, exclude=exclude, source_num_classes=file_config.num_classes
    )
    return report
