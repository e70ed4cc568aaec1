"""Keras 2-layout HDF5 weights: matterport's `.h5` files (read and written) and the Keras
ImageNet files, which share that layout (root `layer_names`, per-layer `weight_names`)."""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import h5py
import numpy as np

from casting.files import atomic_path
from casting.model.weights.by_name import (
    CLASS_DEPENDENT_LAYERS, RPN_LAYERS, LoadReport, WeightsError, _named_layers, _short,
    _var_short_name, copy_weights_by_name,
)

def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _legacy_root(f: h5py.File) -> h5py.Group | None:
    if "layer_names" in f.attrs:
        return f
    if "model_weights" in f and "layer_names" in f["model_weights"].attrs:
        return f["model_weights"]
    return None


def read_h5_weights(
    path: str | os.PathLike, known_names: Iterable[str] = ()
) -> dict[str, dict[str, np.ndarray]]:
    """Read a Keras 2-layout weights file (root `layer_names`, per-layer `weight_names`)
    into {layer name: {variable name: array}} in file order.

    A group holding several layers' weights (matterport's nested `rpn_model`) is split by
    the layer component of each weight name; a wrapper's weights (TimeDistributed) stay
    under the wrapper's name when that name is a known layer."""
    path = os.fspath(path)
    known = set(known_names) | set(RPN_LAYERS) | set(CLASS_DEPENDENT_LAYERS)
    out: dict[str, dict[str, np.ndarray]] = {}
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot be read as an HDF5 weights file ({exc})") from exc
    with f:
        root = _legacy_root(f)
        if root is None:
            raise WeightsError(
                f"{path}: not a Keras 2-layout weights file (no 'layer_names' attribute and no "
                "'model_weights' group)"
            )
        for lname in (_decode(n) for n in root.attrs["layer_names"]):
            if lname not in root:
                continue
            group = root[lname]
            wnames = [_decode(w) for w in group.attrs.get("weight_names", [])]
            for wname in wnames:
                parts = wname.split("/")
                if lname in known or len(parts) < 2:
                    owner = lname
                else:
                    inner = [p for p in parts[:-1] if p in known]
                    owner = inner[-1] if inner else parts[-2]
                out.setdefault(owner, {})[_short(wname)] = np.asarray(group[wname])
    return out


def _file_num_classes(weights: Mapping[str, Mapping[str, np.ndarray]]) -> int | None:
    logits = weights.get("mrcnn_class_logits")
    if logits:
        for key, arr in logits.items():
            if key == "bias" or arr.ndim == 1:
                return int(arr.shape[-1])
    return None


def is_matterport_h5(path: str | os.PathLike) -> bool:
    try:
        with h5py.File(os.fspath(path), "r") as f:
            return _legacy_root(f) is not None
    except (OSError, ValueError):
        return False


def load_matterport_h5(
    model: Any,
    path: str | os.PathLike,
    exclude: Iterable[str] = (),
    report: LoadReport | None = None,
) -> LoadReport:
    """Load a matterport-layout `.h5` (or any Keras 2 `save_weights` file whose layer names
    are matterport's) by layer name. Class-dependent heads of another N are skipped."""
    path = os.fspath(path)
    report = report or LoadReport(source=path)
    report.format = "matterport h5"
    layers = _named_layers(model)
    weights = read_h5_weights(path, known_names=layers)
    if any(_is_keras_resnet_name(n) for n in weights) and not any(
        n in layers for n in weights
    ):
        # A Keras-applications ResNet file given by path: rename its layers.
        from casting.model.weights.imagenet import load_imagenet_backbone

        return load_imagenet_backbone(model, path, report=report)
    if not weights:
        raise WeightsError(f"{path}: the file holds no layer weights")
    copy_weights_by_name(
        model, weights, report, exclude=exclude, source_num_classes=_file_num_classes(weights)
    )
    if not report.loaded:
        raise WeightsError(
            f"{path}: none of its {len(weights)} layers matched the model's layer names "
            f"(first few: {sorted(weights)[:5]})"
        )
    return report


def save_matterport_h5(model: Any, path: str | os.PathLike) -> str:
    """Write the model's weights in matterport's layout (Keras 2 `save_weights` HDF5):
    one group per layer with `weight_names`, the RPN's layers in a nested `rpn_model`
    group, kernels in matterport's shapes. Written atomically; returns the path."""
    path = os.fspath(path)
    layers = _named_layers(model)
    config = getattr(model, "config", None)
    pool = int(getattr(config, "pool_size", 7))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_matterport_layout(f, layers, pool)
    return path


def _write_matterport_layout(f: h5py.File, layers: Mapping[str, Any], pool: int) -> None:
    """Fill an open HDF5 file with matterport's layout (see save_matterport_h5)."""
    layer_names: list[str] = []
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.2.4"
    rpn_group = None
    rpn_names: list[bytes] = []
    for name, layer in layers.items():
        variables = list(layer.weights)
        if not variables:
            continue
        if name in RPN_LAYERS:
            if rpn_group is None:
                rpn_group = f.create_group("rpn_model")
                layer_names.append("rpn_model")
            group = rpn_group
        else:
            group = f.create_group(name)
            layer_names.append(name)
        wnames = []
        for var in variables:
            short = _var_short_name(var)
            value = np.asarray(var.numpy() if hasattr(var, "numpy") else var)
            value = _to_matterport_shape(name, short, value, pool)
            wname = f"{name}/{short}:0"
            group.create_dataset(wname, data=value)
            wnames.append(wname.encode("utf-8"))
        if name in RPN_LAYERS:
            rpn_names.extend(wnames)
            group.attrs["weight_names"] = np.array(rpn_names, dtype="S")
        else:
            group.attrs["weight_names"] = np.array(wnames, dtype="S")
    # fixed-length byte strings, as Keras 2's save_weights writes them
    f.attrs["layer_names"] = np.array([n.encode("utf-8") for n in layer_names], dtype="S")


def _to_matterport_shape(name: str, short: str, value: np.ndarray, pool: int) -> np.ndarray:
    if short != "kernel" or value.ndim != 2:
        return value
    if name == "mrcnn_class_conv1":
        fan_in, out = value.shape
        channels = fan_in // (pool * pool)
        if channels * pool * pool == fan_in:
            return value.reshape(pool, pool, channels, out)
    if name in ("mrcnn_class_conv2",):
        return value.reshape(1, 1, *value.shape)
    return value


# ------------------------------------------------------------------------------------------
# ImageNet (Keras applications ResNet50 / ResNet101)


def _is_keras_resnet_name(name: str) -> bool:
    from casting.model.weights.imagenet import keras_resnet_to_matterport

    return keras_resnet_to_matterport(name) is not None
