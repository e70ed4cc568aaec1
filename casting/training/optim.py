"""The optimizer and which layers it trains: SGD with momentum, clipping and the plan's
learning rate; one optimizer state for every layer group a schedule trains."""

from __future__ import annotations

from typing import Any

from casting.precision import wrap_optimizer
from casting.schedule import Plan


def make_optimizer(config: Any, plan: Plan, decoupled_weight_decay: bool = True):
    """SGD + momentum, global-norm clipping, and the plan's warm-up/stage learning rate;
    inside a LossScaleOptimizer when ``config.precision`` is ``mixed_float16``.

    With ``decoupled_weight_decay`` the optimizer applies ``config.weight_decay`` (not to
    biases or normalisation parameters). Pass False for a model that already adds an L2
    term to its loss (``MaskRCNN.weight_decay_loss``), so the decay is not applied twice."""
    import keras

    clip = float(config.gradient_clip_norm or 0.0)
    decay = float(config.weight_decay or 0.0) if decoupled_weight_decay else 0.0
    optimizer = keras.optimizers.SGD(
        learning_rate=plan.lr_schedule(),
        momentum=float(config.momentum),
        weight_decay=decay or None,
        global_clipnorm=clip if clip > 0 else None,
    )
    if decay:
        optimizer.exclude_from_weight_decay(
            var_names=["bias", "gamma", "beta", "moving_mean", "moving_variance"])
    # float16: dynamic loss scaling around it (its scale is checkpointed with the rest)
    return wrap_optimizer(optimizer, getattr(config, "precision", "float32"))


def set_layers(model: Any, layers: str) -> None:
    """``model.set_trainable_layers(layers)`` and drop the traced train function so the
    next ``fit`` sees the new trainable variables."""
    setter = getattr(model, "set_trainable_layers", None)
    if setter is None:
        if layers != "all":
            raise ValueError(f"this model cannot train only {layers!r}")
    else:
        setter(layers)
    # The train function captured the trainable variables when it was traced.
    model.train_function = None


def build_optimizer_for_all_layers(model: Any, optimizer: Any, first_layers: str) -> None:
    """Build the optimizer's slots for every variable any stage may train, so one
    optimizer (and one checkpoint layout) serves every stage; then select ``first_layers``."""
    set_layers(model, "all")
    variables = list(model.trainable_variables)
    if not variables:
        raise RuntimeError("the model has no trainable variables (is it built?)")
    if not optimizer.built:
        optimizer.build(variables)
    set_layers(model, first_layers)
