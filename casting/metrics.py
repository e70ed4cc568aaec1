"""One format for metric log lines, and the SageMaker ``metric_definitions`` that read them.

SageMaker scans the job's stdout/stderr with each definition's regex and takes the first
group as the value.  Two kinds of lines carry metrics:

* Keras 3 ``fit(..., verbose=2)`` epoch lines::

    2/2 - 3s - 1s/step - loss: 2.4404 - mrcnn_bbox_loss: 2.0000e-05 - ... - val_loss: 2.1

  Each regex is anchored on the `` - `` separator before the name, so ``loss`` matches
  neither ``val_loss`` nor ``mrcnn_mask_loss``, and accepts exponents (``3.4000e-04``).
  Use ``verbose=2`` in SageMaker: ``verbose=1`` progress bars fill CloudWatch with
  ``\\r``/ANSI noise.

* Evaluation lines written with :func:`format_eval_line`::

    [eval] epoch=3 bbox_AP=0.1234 segm_AP=0.1101 segm_AP50=0.3 segm_AP_small=4.5e-05
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from casting.config import LOSS_NAMES

# A float as Keras or Python prints it: 1.2345, 0.5, .5, 12, 3.4000e-04, -1e+05.
NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"

TRAIN_METRICS = ("loss",) + LOSS_NAMES
VAL_METRICS = tuple(f"val_{name}" for name in TRAIN_METRICS)

EVAL_PREFIX = "[eval]"
# COCO summary numbers, for boxes and masks.
EVAL_STATS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")
EVAL_METRICS = tuple(f"{kind}_{stat}" for kind in ("bbox", "segm") for stat in EVAL_STATS)
# Part-level figures of the acceptance policy (casting.qc.parts).
EVAL_METRICS += ("part_catch_rate", "part_false_reject_rate")

_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def keras_regex(name: str) -> str:
    """Regex for ``name`` in a Keras ``verbose=2`` line (`` - name: value``)."""
    return rf" - {re.escape(name)}: ({NUMBER})"


def eval_regex(name: str) -> str:
    """Regex for ``name=value`` after ``[eval]`` on the same line."""
    return rf"{re.escape(EVAL_PREFIX)}(?: [^ \n]+)*? {re.escape(name)}=({NUMBER})(?:\s|$)"


def _definitions() -> list[dict[str, str]]:
    defs = [{"Name": n, "Regex": keras_regex(n)} for n in TRAIN_METRICS + VAL_METRICS]
    defs += [{"Name": n, "Regex": eval_regex(n)} for n in EVAL_METRICS]
    return defs


METRIC_DEFINITIONS: list[dict[str, str]] = _definitions()
assert len(METRIC_DEFINITIONS) <= 40, "SageMaker accepts at most 40 metric definitions"


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if hasattr(value, "item"):  # numpy / tensor scalars
        value = value.item()
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.6g}"


def format_eval_line(metrics: Mapping[str, Any]) -> str:
    """``[eval] epoch=3 bbox_AP=0.1234 ...``: ``epoch`` (if given) first, then the rest in
    the mapping's order.  Keys must be identifiers; values are numbers."""
    items = list(metrics.items())
    items.sort(key=lambda kv: kv[0] != "epoch")  # stable: keeps the rest in order
    parts = [EVAL_PREFIX]
    for key, value in items:
        if not _KEY.match(str(key)):
            raise ValueError(f"metric name {key!r} must be an identifier")
        parts.append(f"{key}={_format_value(value)}")
    return " ".join(parts)


def parse_metrics(
    text: str, definitions: list[dict[str, str]] | None = None
) -> dict[str, list[float]]:
    """Apply the definitions line by line, as SageMaker does with log events, and return
    every value found per metric name, in order (names with no match are left out)."""
    definitions = METRIC_DEFINITIONS if definitions is None else definitions
    compiled = [(d["Name"], re.compile(d["Regex"])) for d in definitions]
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        for name, regex in compiled:
            match = regex.search(line)
            if match:
                found.setdefault(name, []).append(float(match.group(1)))
    return found


def per_class_line(metrics: Mapping[str, Any]) -> str:
    """'segm AP50 per class on the N evaluated images: disk 1.00, holes 0.92, ...' (n/a
    where the evaluated images hold no object of the class)."""
    per_class = metrics["segm"].get("per_class_AP50") or {}
    parts = [f"{name} {'n/a' if value is None else f'{value:.2f}'}"
             for name, value in per_class.items()]
    return (f"segm AP50 per class on the {metrics['num_images']} evaluated images: "
            + ", ".join(parts))
