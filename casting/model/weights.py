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
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import h5py
import numpy as np

from casting.files import atomic_path

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
]

# Layers whose shapes depend on the number of classes N.
CLASS_DEPENDENT_LAYERS = ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask")
# Layers that matterport keeps inside the nested `rpn_model`.
RPN_LAYERS = ("rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred")
# Canonical order of a layer's variables (matterport / Keras order).
_VAR_ORDER = ("kernel", "depthwise_kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")

_IMAGENET_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet101": "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


class WeightsError(ValueError):
    """A weights file or URI is missing, unreadable or not a format we know."""


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What a load did. `loaded`: layer names that received weights; `skipped`: (name,
    reason) for layers of the file that were not loaded; `missing`: model layers the file
    had no weights for."""

    source: str = "none"
    format: str = "none"
    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"weights: {self.source} ({self.format}): loaded {len(self.loaded)} layers, "
            f"skipped {len(self.skipped)}, not in file {len(self.missing)}"
        ]
        for name, reason in self.skipped:
            lines.append(f"  skipped {name}: {reason}")
        if self.missing:
            shown = ", ".join(self.missing[:12])
            more = f" ... (+{len(self.missing) - 12})" if len(self.missing) > 12 else ""
            lines.append(f"  not in file: {shown}{more}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.summary()


# ------------------------------------------------------------------------------------------
# Helpers on the model side
# ------------------------------------------------------------------------------------------
def _named_layers(model: Any) -> dict[str, Any]:
    if not hasattr(model, "named_layers"):
        raise TypeError(
            f"{type(model).__name__} has no named_layers(); weights load by matterport layer name"
        )
    _ensure_built(model)
    return dict(model.named_layers())


def _ensure_built(model: Any) -> None:
    """Create the model's variables if it has not been called yet."""
    for hook in ("ensure_built", "build_model", "build_for_inference"):
        fn = getattr(model, hook, None)
        if callable(fn):
            fn()
            return
    if not getattr(model, "built", True) or not getattr(model, "weights", [1]):
        config = getattr(model, "config", None)
        size = int(getattr(config, "image_size", 64))
        try:
            model.build((None, size, size, 3))
        except Exception:  # pragma: no cover - depends on the model's build()
            pass


def _var_short_name(var: Any) -> str:
    name = getattr(var, "name", "") or getattr(var, "path", "")
    return _short(name)


def _short(name: str) -> str:
    name = name.split("/")[-1]
    return name.split(":")[0]


def _model_num_classes(model: Any) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "num_classes", None)


def _fit_array(src: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray | None:
    """`src` as `target_shape`, or None when it does not fit.

    Equal shapes pass; a kernel stored as a k x k conv and used as a Dense on the flattened
    (y, x, channel) input (or the reverse) is reshaped: same size, same output dimension."""
    src = np.asarray(src)
    if tuple(src.shape) == tuple(target_shape):
        return src
    if (
        src.size == int(np.prod(target_shape))
        and src.ndim >= 2
        and len(target_shape) >= 2
        and src.shape[-1] == target_shape[-1]
        and (src.ndim == 2 or len(target_shape) == 2)
    ):
        return src.reshape(target_shape)
    return None


def copy_weights_by_name(
    model: Any,
    weights: Mapping[str, Mapping[str, np.ndarray] | list[np.ndarray]],
    report: LoadReport,
    exclude: Iterable[str] = (),
    source_num_classes: int | None = None,
    only: Iterable[str] | None = None,
) -> LoadReport:
    """Copy `weights` ({layer name: {var name: array}} or {layer: [arrays in order]}) into
    the model's layers of the same matterport name. A layer is loaded whole or not at all."""
    layers = _named_layers(model)
    exclude = set(exclude or ())
    only = set(only) if only is not None else None
    n_model = _model_num_classes(model)
    seen = set()
    for name, arrays in weights.items():
        if only is not None and name not in only:
            continue
        seen.add(name)
        if name in exclude:
            report.skipped.append((name, "excluded"))
            continue
        layer = layers.get(name)
        if layer is None:
            report.skipped.append((name, "no layer of that name in the model"))
            continue
        targets = list(layer.weights)
        if isinstance(arrays, Mapping):
            by_name = {_short(k): np.asarray(v) for k, v in arrays.items()}
            target_names = [_var_short_name(v) for v in targets]
            if set(by_name) == set(target_names):
                ordered = [by_name[n] for n in target_names]
            else:
                ordered = [by_name[k] for k in _canonical_order(list(by_name))]
        else:
            ordered = [np.asarray(a) for a in arrays]
        if len(ordered) != len(targets):
            report.skipped.append(
                (name, f"{len(ordered)} arrays in file, {len(targets)} in the model's layer")
            )
            continue
        fitted = []
        problem = None
        for src, var in zip(ordered, targets):
            shape = tuple(int(d) for d in var.shape)
            out = _fit_array(src, shape)
            if out is None:
                problem = f"shape {list(src.shape)} in file vs {list(shape)} in model"
                break
            fitted.append(out.astype(np.dtype(_var_dtype(var)), copy=False))
        if problem is not None:
            if name in CLASS_DEPENDENT_LAYERS:
                n_file = source_num_classes
                detail = f"N={n_file} in file" if n_file else "another N in file"
                problem = (
                    f"class-dependent head ({detail}, N={n_model} in model): {problem}"
                )
            report.skipped.append((name, problem))
            continue
        for var, value in zip(targets, fitted):
            var.assign(value)
        report.loaded.append(name)
    wanted = layers if only is None else {k: v for k, v in layers.items() if k in only}
    report.missing.extend(
        n for n, layer in wanted.items() if n not in seen and list(layer.weights)
    )
    return report


def _var_dtype(var: Any) -> str:
    dtype = getattr(var, "dtype", "float32")
    return getattr(dtype, "name", None) or str(dtype)


def _canonical_order(names: list[str]) -> list[str]:
    def key(n: str) -> tuple[int, int]:
        return (_VAR_ORDER.index(n) if n in _VAR_ORDER else len(_VAR_ORDER), names.index(n))

    return sorted(names, key=key)


# ------------------------------------------------------------------------------------------
# Keras 2-style h5 files (matterport and the Keras ImageNet files)
# ------------------------------------------------------------------------------------------
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
    if any(keras_resnet_to_matterport(n) for n in weights) and not any(
        n in layers for n in weights
    ):
        # A Keras-applications ResNet file given by path: rename its layers.
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
# ------------------------------------------------------------------------------------------
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
    filename = imagenet_cache_filename(backbone)
    dirs = []
    if cache_dir:
        dirs += [cache_dir, os.path.join(cache_dir, "models")]
    if os.environ.get("KERAS_HOME"):
        dirs.append(os.path.join(os.environ["KERAS_HOME"], "models"))
    try:
        from keras.src.backend.config import keras_home

        dirs.append(os.path.join(keras_home(), "models"))
    except Exception:  # pragma: no cover - keras internals moved
        pass
    dirs += [os.path.expanduser("~/.keras/models"), "/tmp/.keras/models"]
    dirs = list(dict.fromkeys(os.path.abspath(d) for d in dirs))  # each folder once
    for d in dirs:
        candidate = os.path.join(d, filename)
        if os.path.isfile(candidate):
            return candidate
    # Not cached: let Keras download it (this needs internet access).
    import keras

    builder = {"resnet50": keras.applications.ResNet50, "resnet101": keras.applications.ResNet101}
    home = os.path.join(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"), "models")
    try:
        builder[backbone](weights="imagenet", include_top=False)
    except Exception as exc:
        raise WeightsError(
            f"ImageNet weights {filename} are not in the Keras cache ({', '.join(dirs)}) and "
            f"could not be downloaded: {exc}. Put the file at {os.path.join(home, filename)} "
            "(or in any of those folders; the image ships it), give a weights file or model "
            "folder with "
            "--init-weights PATH, or train from random weights with --init-weights none."
        ) from exc
    for d in dirs:
        candidate = os.path.join(d, filename)
        if os.path.isfile(candidate):
            return candidate
    raise WeightsError(f"Keras downloaded {filename} but it is in none of {dirs}")


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


# ------------------------------------------------------------------------------------------
# Our own model files
# ------------------------------------------------------------------------------------------
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

    source = MaskRCNN(file_config)
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


# ------------------------------------------------------------------------------------------
# Locating files: S3, tarballs, folders
# ------------------------------------------------------------------------------------------
def _safe_extract(archive: str, dest: str) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            try:
                tar.extractall(dest, filter="data")
            except TypeError:  # pragma: no cover - Python without extraction filters
                tar.extractall(dest)
    except (tarfile.TarError, OSError) as exc:
        raise WeightsError(f"{archive}: cannot be extracted ({exc})") from exc


def _find_model_in(folder: str) -> str:
    """The shallowest model folder / weights file under `folder`."""
    candidates = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        depth = root[len(folder):].count(os.sep)
        if "model.weights.h5" in files:
            candidates.append((depth, 0, root))
        for name in sorted(files):
            if name.endswith(".h5") and name != "model.weights.h5":
                candidates.append((depth, 1, os.path.join(root, name)))
            elif name.endswith(".tar.gz") or name.endswith(".tgz"):
                candidates.append((depth, 2, os.path.join(root, name)))
    if not candidates:
        raise WeightsError(f"{folder}: holds no model.weights.h5, .h5 file or model.tar.gz")
    candidates.sort()
    return candidates[0][2]


def _parse_s3(uri: str) -> tuple[str, str]:
    m = re.match(r"^s3://([^/]+)/?(.*)$", uri)
    if not m:
        raise WeightsError(f"{uri}: not an s3://bucket/key URI")
    return m.group(1), m.group(2)


def fetch_s3(uri: str, dest: str, client: Any = None) -> str:
    """Download an S3 file or every object under a prefix into `dest`; returns the local
    file (for a key) or folder (for a prefix)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _parse_s3(uri)
    s3 = client or boto3.client("s3")
    os.makedirs(dest, exist_ok=True)
    try:
        if key and not key.endswith("/"):
            try:
                s3.head_object(Bucket=bucket, Key=key)
                is_file = True
            except ClientError:
                is_file = False
            if is_file:
                local = os.path.join(dest, os.path.basename(key))
                s3.download_file(bucket, key, local)
                if local.endswith(".weights.h5"):
                    sibling = key.rsplit("/", 1)[0] + "/config.json" if "/" in key else "config.json"
                    try:
                        s3.download_file(bucket, sibling, os.path.join(dest, "config.json"))
                    except ClientError:
                        pass
                return local
        prefix = key if not key or key.endswith("/") else key + "/"
        paginator = s3.get_paginator("list_objects_v2")
        count = 0
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if not rel or rel.endswith("/"):
                    continue
                if not (rel.endswith((".h5", ".json", ".tar.gz", ".tgz"))):
                    continue  # saved_model/, checkpoints' extras: not needed for weights
                local = os.path.join(dest, *rel.split("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                s3.download_file(bucket, obj["Key"], local)
                count += 1
        if count == 0:
            raise WeightsError(f"{uri}: no such object and no weights files under that prefix")
        return dest
    except (ClientError, BotoCoreError) as exc:
        raise WeightsError(f"{uri}: cannot be downloaded ({exc})") from exc


def _resolve_local(path: str, scratch: str) -> str:
    """A folder or file we can load: tarballs extracted, folders searched."""
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such file or folder")
    if os.path.isfile(path) and (path.endswith(".tar.gz") or path.endswith(".tgz")):
        out = tempfile.mkdtemp(prefix="extract-", dir=scratch)
        _safe_extract(path, out)
        return _resolve_local(_find_model_in(out), scratch)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model.weights.h5")):
        found = _find_model_in(path)
        return _resolve_local(found, scratch)
    return path


# ------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------
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
