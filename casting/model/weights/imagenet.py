"""ImageNet backbones: the Keras-applications ResNet50/101 no-top file, found in the Keras
cache (or downloaded, its checksum verified) and renamed onto matterport's layer names."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from casting.model.weights.by_name import (
    LoadReport, WeightsError, _named_layers, _var_short_name, copy_weights_by_name,
)
from casting.model.weights.h5 import is_matterport_h5, read_h5_weights

_IMAGENET_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet101": "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
}
# Where Keras applications publishes them, and their MD5 checksums (keras.applications.resnet).
_IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
_IMAGENET_MD5 = {
    "resnet50": "4d473c1dd8becc155b73f8504c6f6626",
    "resnet101": "88cf7a10940856eca736dc7b7e228a21",
}
_KERAS_RESNET = re.compile(r"^conv(\d)_block(\d+)_(\d)_(conv|bn)$")


def keras_resnet_to_matterport(name: str) -> str | None:
    """`conv2_block1_1_conv` -> `res2a_branch2a`, `conv2_block1_0_bn` -> `bn2a_branch1`,
    `conv1_conv` -> `conv1`, `conv1_bn` -> `bn_conv1`; None for other names."""
    if name == "conv1_conv":
        return "conv1"
    if name == "conv1_bn":
        return "bn_conv1"
    m = _KERAS_RESNET.match(name)
    if not m:
        return None
    stage, block, index, kind = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
    if index > 3 or block < 1 or block > 26:
        return None
    letter = chr(ord("a") + block - 1)
    branch = "branch1" if index == 0 else "branch2" + "abc"[index - 1]
    prefix = "res" if kind == "conv" else "bn"
    return f"{prefix}{stage}{letter}_{branch}"


def imagenet_cache_filename(backbone: str) -> str:
    try:
        return _IMAGENET_FILES[backbone]
    except KeyError:
        raise WeightsError(
            f"no ImageNet weights for backbone {backbone!r}; known: {sorted(_IMAGENET_FILES)}"
        ) from None


def _find_imagenet_file(backbone: str, cache_dir: str | None) -> str:
    """The no-top file from the first cache folder that has it, else downloaded with
    `keras.utils.get_file` into the Keras cache, its MD5 checked against the published one."""
    filename = imagenet_cache_filename(backbone)
    home = os.path.join(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"), "models")
    dirs = [cache_dir, os.path.join(cache_dir, "models")] if cache_dir else []
    dirs += [home, os.path.expanduser("~/.keras/models"), "/tmp/.keras/models"]
    dirs = list(dict.fromkeys(os.path.abspath(d) for d in dirs))  # each folder once
    for d in dirs:
        candidate = os.path.join(d, filename)
        if os.path.isfile(candidate):
            return candidate
    # Not cached: download it (this needs internet access).
    import keras

    try:
        return keras.utils.get_file(filename, _IMAGENET_URL + filename, cache_subdir="models",
                                    file_hash=_IMAGENET_MD5[backbone])
    except Exception as exc:
        raise WeightsError(
            f"ImageNet weights {filename} are not in the Keras cache ({', '.join(dirs)}) and "
            f"could not be downloaded: {exc}. Put the file at {os.path.join(home, filename)} "
            "(or in any of those folders; the image ships it), give a weights file or model "
            "folder with "
            "--init-weights PATH, or train from random weights with --init-weights none."
        ) from exc


def _read_keras_resnet(path: str, backbone: str) -> dict[str, list[np.ndarray] | dict]:
    """{keras layer name: weights} from a Keras ResNet no-top file, either layout."""
    if is_matterport_h5(path):  # Keras 2 layout, as the cached download is
        return read_h5_weights(path)
    import keras

    builder = {"resnet50": keras.applications.ResNet50, "resnet101": keras.applications.ResNet101}
    net = builder[backbone](weights=None, include_top=False)
    try:
        net.load_weights(path)
    except Exception as exc:
        raise WeightsError(f"{path}: not a Keras {backbone} no-top weights file ({exc})") from exc
    return {
        layer.name: {_var_short_name(v): np.asarray(v.numpy()) for v in layer.weights}
        for layer in net.layers
        if layer.weights
    }


def load_imagenet_backbone(
    model: Any,
    path: str | os.PathLike,
    report: LoadReport | None = None,
    rgb: bool = True,
) -> LoadReport:
    """Copy a Keras-applications ResNet no-top file's weights into the backbone layers.

    The Keras ResNet weights were converted from Caffe and expect BGR input; our model (like
    matterport's) is fed RGB minus the mean pixel. With `rgb=True` (default) the input
    channels of `conv1`'s kernel are reversed, which makes the two exactly equivalent."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: ImageNet weights file not found")
    report = report or LoadReport(source=path)
    report.format = "keras imagenet"
    config = getattr(model, "config", None)
    backbone = getattr(config, "backbone", "resnet50")
    raw = _read_keras_resnet(path, backbone)
    renamed: dict[str, Any] = {}
    for name, arrays in raw.items():
        target = keras_resnet_to_matterport(name)
        if target is None:
            report.skipped.append((name, "not a backbone layer"))
            continue
        arrays = dict(arrays)
        if rgb and target == "conv1" and "kernel" in arrays:
            arrays["kernel"] = np.asarray(arrays["kernel"])[:, :, ::-1, :].copy()
        renamed[target] = arrays
    if not renamed:
        raise WeightsError(f"{path}: no Keras ResNet layers (conv1_conv, conv2_block1_1_conv...)")
    layers = _named_layers(model)
    backbone_names = [n for n in layers if re.match(r"^(conv1|bn_conv1|res\d|bn\d)", n)]
    copy_weights_by_name(model, renamed, report, only=set(renamed) | set(backbone_names))
    if rgb:
        report.notes.append("conv1 input channels reversed (Keras ImageNet weights are BGR)")
    return report
