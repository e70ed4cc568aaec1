"""Copying weights into `MaskRCNN` by matterport layer name, and the report of what a load
did. Every loader of casting.model.weights ends here, except an exact reload of our own
weights file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

# Layers whose shapes depend on the number of classes N.
CLASS_DEPENDENT_LAYERS = ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask")
# Layers that matterport keeps inside the nested `rpn_model`.
RPN_LAYERS = ("rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred")
# Canonical order of a layer's variables (matterport / Keras order).
_VAR_ORDER = ("kernel", "depthwise_kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")


class WeightsError(ValueError):
    """A weights file or URI is missing, unreadable or not a format we know."""


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
