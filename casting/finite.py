"""Non-finite values: the loud stop at the first NaN or infinite loss or gradient norm, and
the check that no checkpoint or model is written from weights that are not finite.

A diverging run (too high a learning rate, no gradient clipping, a broken annotation) turns
every loss into NaN within a few steps; training on would overwrite the good checkpoints
with NaN ones and export a NaN model. The loop checks each step's logs
(:func:`nonfinite_logs`) and raises :class:`NonFiniteError` at that step; the checkpoint
manager and the model export refuse non-finite variables (:func:`check_finite`), so what is
on disk stays the last finite state.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from casting.errors import Explained

# What a user can change when training diverges (the message lists these).
REMEDIES = (
    "a lower --learning-rate (e.g. a tenth)",
    "--gradient-clip-norm 5 (or lower) if it is 0",
    "a longer --warmup-steps",
    "`python -m casting.data check DATA` on the training data (degenerate masks or boxes)",
)


class NonFiniteError(Explained, RuntimeError):
    """A loss, a gradient norm or a weight is NaN or infinite."""


def nonfinite_logs(logs: Mapping[str, Any] | None) -> list[str]:
    """The names of the entries of a step's logs whose value is not finite (in log order);
    entries that are not numbers are ignored."""
    bad = []
    for name, value in (logs or {}).items():
        try:
            values = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if values.size and not np.all(np.isfinite(values)):
            bad.append(name)
    return bad


def _describe(value: Any) -> str:
    try:
        number = float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return "?"
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return f"{number:.4g}"


def nonfinite_message(bad: list[str], logs: Mapping[str, Any], epoch: int, step: int,
                      global_step: int, last_checkpoint: str | None) -> str:
    """The stop message: where, which values, what is on disk, what to try."""
    values = ", ".join(f"{name}={_describe(logs[name])}" for name in bad)
    where = (f"the newest checkpoint, {last_checkpoint}, holds the last finite weights "
             "(a restart resumes from it; to start over, give a new --checkpoint-dir)"
             if last_checkpoint else
             "no checkpoint had been written yet (a restart starts from the beginning)")
    return (f"non-finite training values at epoch {epoch + 1}, step {step} (global step "
            f"{global_step}): {values}. Training stopped; nothing was written from these "
            f"weights; {where}. Try: " + "; ".join(REMEDIES) + ".")


def check_finite(variables: Iterable[Any], what: str) -> None:
    """Raise :class:`NonFiniteError` naming up to five variables that hold a NaN or an
    infinity, before ``what`` (e.g. "checkpoint ckpt-12") is written."""
    bad = []
    count = 0
    for variable in variables:
        count += 1
        value = np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            bad.append(getattr(variable, "path", None) or getattr(variable, "name", "?"))
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(
            f"not writing {what}: {len(bad)} of {count} variables are not finite ({shown}). "
            "Training diverged; try: " + "; ".join(REMEDIES) + ".")


__all__ = ["NonFiniteError", "nonfinite_logs", "nonfinite_message", "check_finite",
           "REMEDIES"]
