"""Initial weights for `MaskRCNN`: ImageNet backbones, our own model folders, matterport files.

`load_init_weights(model, spec)` is the one entry point. `spec` is one of

- ``"none"`` (or ``None`` / ``""``): keep the random initialisation.
- ``"imagenet"``: the Keras ResNet50/101 no-top ImageNet file, from the Keras cache
  (``$KERAS_HOME/models`` or ``~/.keras/models``) or downloaded by Keras; its layers are
  renamed onto matterport's backbone names (``conv2_block1_1_conv`` -> ``res2a_branch2a``...).
- a local path: our model folder (``config.json`` + ``model.weights.h5``), a ``.weights.h5``
  file, a ``model.tar.gz`` as SageMaker writes it, or a matterport-format ``.h5``.
- ``s3://bucket/key``: any of the above on S3 (a folder prefix, a file or ``model.tar.gz``),
  downloaded with boto3 first.

Everything except an exact reload of our own weights goes *by matterport layer name*
(`model.named_layers()`): weights whose shapes do not fit (class-dependent heads trained for
another number of classes) are skipped and listed in the returned `LoadReport`, never
silently reshaped. The only reshape done is the box head's first layer, which matterport
stores as a 7x7 "valid" convolution and a model may implement as a Dense layer on the
flattened (y, x, channel) features: the two kernels hold the same numbers.

`save_matterport_h5(model, path)` writes the matterport (Keras 2 ``save_weights``) layout,
so weights can go back to a matterport/TF1 code base, and `read_h5_weights` reads any
Keras 2-style weights file into plain arrays.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Iterable

import h5py

from casting.model.weights.by_name import (
    CLASS_DEPENDENT_LAYERS, RPN_LAYERS, LoadReport, WeightsError,
    copy_weights_by_name,
)
from casting.model.weights.h5 import (
    is_matterport_h5, load_matterport_h5, read_h5_weights, save_matterport_h5,
)
from casting.model.weights.imagenet import (
    _find_imagenet_file, imagenet_cache_filename, keras_resnet_to_matterport,
    load_imagenet_backbone,
)
from casting.model.weights.locate import _resolve_local, fetch_s3
from casting.model.weights.ours import _is_keras3_weights, load_model_weights

__all__ = [
    "LoadReport",
    "WeightsError",
    "CLASS_DEPENDENT_LAYERS",
    "RPN_LAYERS",
    "load_init_weights",
    "load_imagenet_backbone",
    "load_matterport_h5",
    "load_model_weights",
    "save_matterport_h5",
    "read_h5_weights",
    "keras_resnet_to_matterport",
    "imagenet_cache_filename",
    "copy_weights_by_name",
    "fetch_s3",
    "is_matterport_h5",
]


def load_init_weights(
    model: Any,
    spec: str | os.PathLike | None,
    cache_dir: str | None = None,
    exclude: Iterable[str] = (),
    verbose: bool = False,
    s3_client: Any = None,
) -> LoadReport:
    """Initialise `model` from `spec` ("none", "imagenet", a path or an s3:// URI); see the
    module docstring. Returns a `LoadReport`; prints its summary when `verbose`."""
    spec = "none" if spec is None else os.fspath(spec)
    exclude = list(exclude or ())
    text = spec.strip()
    if text.lower() in ("", "none", "random"):
        report = LoadReport(source="none", format="none")
    elif text.lower() == "imagenet":
        config = getattr(model, "config", None)
        backbone = getattr(config, "backbone", "resnet50")
        path = _find_imagenet_file(backbone, cache_dir)
        report = load_imagenet_backbone(model, path, report=LoadReport(source=path))
    else:
        scratch = cache_dir or tempfile.mkdtemp(prefix="casting-weights-")
        os.makedirs(scratch, exist_ok=True)
        try:
            if text.startswith("s3://"):
                local = fetch_s3(text, tempfile.mkdtemp(prefix="s3-", dir=scratch), s3_client)
            else:
                local = os.path.expanduser(text)
            report = _load_path(model, _resolve_local(local, scratch), exclude, source=text)
        finally:
            if cache_dir is None:
                shutil.rmtree(scratch, ignore_errors=True)
    if verbose:
        print(report.summary())
    return report


def _load_path(model: Any, path: str, exclude: list[str], source: str) -> LoadReport:
    report = LoadReport(source=source)
    if os.path.isdir(path):
        return load_model_weights(model, path, exclude=exclude, report=report)
    if is_matterport_h5(path):
        return load_matterport_h5(model, path, exclude=exclude, report=report)
    if _is_keras3_weights(path):
        return load_model_weights(model, path, exclude=exclude, report=report)
    try:
        with h5py.File(path, "r"):
            pass
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not readable as an HDF5 weights file ({exc})") from exc
    raise WeightsError(
        f"{path}: unrecognised weights file (neither matterport/Keras 2 layout with "
        "'layer_names' nor a Keras 3 .weights.h5)"
    )
