"""Training precision: float32, or Keras mixed precision (float16 with loss scaling, bfloat16).

`precision` (a Config field) names the Keras dtype policy the model's layers compute in:

- ``float32``: everything in float32 (the default where no GPU is found).
- ``mixed_float16``: layers compute in float16 with float32 variables; the loss is scaled
  (Keras ``LossScaleOptimizer``: the scale halves at a step whose gradients overflow, which
  is then skipped, and doubles after 2000 finite steps) so small gradients do not underflow.
- ``mixed_bfloat16``: layers compute in bfloat16 with float32 variables; bfloat16 has
  float32's exponent range, so no loss scaling.

``auto`` (the hyperparameter's default) picks by the first GPU's compute capability:
bfloat16 from 8.0 (A100, A10G, L4, H100), float16 on 7.x (V100, T4), float32 below that or
without a GPU. What stays in float32 whatever the policy is listed in docs/training.md
("Precision"); the model folder and the SavedModel take and return float32.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
CHOICES = ("auto",) + PRECISIONS


def for_compute_capability(capability: Sequence[int] | None) -> str:
    """The precision `auto` means on a GPU of this compute capability (None: no GPU)."""
    if not capability:
        return "float32"
    major = int(capability[0])
    if major >= 8:
        return "mixed_bfloat16"
    if major == 7:
        return "mixed_float16"
    return "float32"


def gpu_compute_capability() -> tuple[int, int] | None:
    """The first visible GPU's compute capability, or None without a GPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    capability = details.get("compute_capability")
    return tuple(capability) if capability else None


def resolve(requested: str) -> tuple[str, str]:
    """(precision, why) for a requested precision; `auto` looks at the GPU."""
    requested = str(requested or "auto").lower()
    if requested not in CHOICES:
        raise ValueError(f"precision must be one of {CHOICES}, not {requested!r}")
    if requested != "auto":
        return requested, "as requested"
    capability = gpu_compute_capability()
    chosen = for_compute_capability(capability)
    if capability is None:
        return chosen, "auto: no GPU"
    return chosen, f"auto: GPU compute capability {capability[0]}.{capability[1]}"


def uses_loss_scale(precision: str) -> bool:
    return precision == "mixed_float16"


@contextlib.contextmanager
def policy_scope(precision: str) -> Iterator[None]:
    """Layers created inside take the `precision` dtype policy (Keras reads the global
    policy when a layer is made); the previous global policy comes back afterwards."""
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def wrap_optimizer(optimizer: Any, precision: str) -> Any:
    """The optimizer with dynamic loss scaling for float16 (as it is otherwise). Clipping
    and the learning rate stay on the inner optimizer, which sees unscaled gradients."""
    import keras

    if not uses_loss_scale(precision) or isinstance(optimizer,
                                                    keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)


def loss_scale(optimizer: Any):
    """The optimizer's current loss scale (a float32 tensor), or None without scaling."""
    scale = getattr(optimizer, "dynamic_scale", None)
    return None if scale is None else scale.value


def scaled_step_logs(grad_norm, scale):
    """(grad_norm, loss scale) as a loss-scaled training step logs them.

    A step whose float16 gradients overflow is skipped by the LossScaleOptimizer, which
    halves the scale: loss scaling at work, not divergence, so that step logs grad_norm 0
    (`loss_scale` shows the halving). Only once the scale has fallen below 1 (gradients not
    finite even unscaled) does the non-finite norm reach the logs, and with it the
    training loop's loud stop (casting.finite). A non-finite loss stops it as before."""
    import tensorflow as tf

    keep = tf.math.is_finite(grad_norm) | (scale < 1.0)
    return tf.where(keep, grad_norm, tf.zeros_like(grad_norm)), scale
