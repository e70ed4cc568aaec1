"""Quality results in one shape, whoever produced them, and how they are shown.

The common shape (``Result``, a plain dict; a figure COCO could not compute is NaN)::

    {"segm": {"AP", "AP50", "AP75", "AP_small",
              "per_class_AP": {class: AP}, "per_class_AP50": {class: AP50}},
     "bbox": {... the same ...},
     "defect_segm_AP50": mean segm AP50 over the classes other than disk that the test
                         set has (NaN when none has a value),
     "dets_per_img", "steps", "train_s", "s_per_step"}

* :func:`from_evaluation` reads our ``evaluation.json`` (``casting.evaluation``), and
  :func:`keras_epoch_seconds` our training time from ``train.py``'s log (the Keras
  ``verbose=2`` epoch lines, ``150/150 - 431s - 3s/step - loss: ...``);
* :func:`parse_peer_log` reads the output of ``../shared/bench/peer_quality_torchvision.py``
  (its ``[result] segm:`` / ``[result] bbox:``, ``[train] done:``, ``[eval] predicted``
  and ``peer_quality`` lines);
* :func:`figures` flattens a result into the ``key=value`` figures of the final
  ``quality ...`` line; :func:`table` prints ours beside the peer's with their ratio.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping

NAN = float("nan")
IOU_TYPES = ("segm", "bbox")
NOT_DEFECTS = ("disk",)
# the real data's classes, shown in this order (others follow by name)
CLASS_ORDER = ("disk", "holes", "chipping", "deburring")


def number(value: Any) -> float:
    """A float; None, missing or unparsable -> NaN."""
    try:
        return NAN if value is None else float(value)
    except (TypeError, ValueError):
        return NAN


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def ordered_classes(names: Iterable[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(CLASS_ORDER)}
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


def defect_mean(per_class_ap50: Mapping[str, float]) -> float:
    """Mean AP50 over the defect classes (not disk) with a value; NaN when none has."""
    values = [v for name, v in per_class_ap50.items()
              if name not in NOT_DEFECTS and finite(v)]
    return sum(values) / len(values) if values else NAN


def empty_result() -> dict:
    kind = {"AP": NAN, "AP50": NAN, "AP75": NAN, "AP_small": NAN, "per_class_AP": {},
            "per_class_AP50": {}}
    return {"segm": dict(kind), "bbox": dict(kind), "defect_segm_AP50": NAN,
            "dets_per_img": NAN, "steps": NAN, "train_s": NAN, "s_per_step": NAN,
            "part_catch_rate": NAN, "part_false_reject_rate": NAN}


# ---- ours ----------------------------------------------------------------------------------
def from_evaluation(evaluation: Mapping[str, Any]) -> dict:
    """Our ``evaluation.json`` -> the common shape (timing left NaN: see
    :func:`keras_epoch_seconds`). ``per_class_AP50`` missing (an older file) -> NaN."""
    result = empty_result()
    classes = evaluation.get("class_names") or list(
        (evaluation.get("segm") or {}).get("per_class", {}))
    for kind in IOU_TYPES:
        src = evaluation.get(kind) or {}
        per_ap = src.get("per_class") or {}
        per_ap50 = src.get("per_class_AP50") or {}
        result[kind] = {
            "AP": number(src.get("AP")), "AP50": number(src.get("AP50")),
            "AP75": number(src.get("AP75")), "AP_small": number(src.get("AP_small")),
            "per_class_AP": {c: number(per_ap.get(c)) for c in classes},
            "per_class_AP50": {c: number(per_ap50.get(c)) for c in classes},
        }
    result["defect_segm_AP50"] = defect_mean(result["segm"]["per_class_AP50"])
    images = number(evaluation.get("num_images", evaluation.get("evaluated_images")))
    dets = number(evaluation.get("num_detections"))
    result["dets_per_img"] = dets / images if finite(images) and images > 0 else NAN
    result["steps"] = number(evaluation.get("global_step"))
    parts = evaluation.get("parts") or {}  # the acceptance policy per part (casting.qc)
    result["part_catch_rate"] = number(parts.get("catch_rate"))
    result["part_false_reject_rate"] = number(parts.get("false_reject_rate"))
    return result


_KERAS_EPOCH = re.compile(r"^\s*(\d+)/(\d+) - (\d+(?:\.\d+)?)s - ")


def keras_epoch_seconds(log_text: str) -> list[float]:
    """Seconds of each epoch in a Keras ``verbose=2`` log (the training steps and the
    epoch-end validation batches), in order."""
    return [float(m.group(3)) for m in map(_KERAS_EPOCH.match, log_text.splitlines()) if m]


def with_timing(result: dict, log_text: str, steps: int) -> dict:
    """Fill ``train_s`` (the sum of the epoch times) and ``s_per_step`` from the log."""
    seconds = keras_epoch_seconds(log_text)
    result = dict(result)
    result["train_s"] = sum(seconds) if seconds else NAN
    result["s_per_step"] = result["train_s"] / steps if seconds and steps else NAN
    if not finite(result["steps"]):
        result["steps"] = float(steps)
    return result


# ---- the peer ------------------------------------------------------------------------------
_RESULT = re.compile(
    r"\[result\] (segm|bbox): AP=(\S+) AP50=(\S+) AP75=(\S+) per-class AP50 (.*?) "
    r"defect_AP50=\S+; per-class AP (.*)$")
_TRAIN_DONE = re.compile(r"\[train\] done: (\d+) iters, .*?, ([\d.]+) min, ([\d.]+) s/it")
_PREDICTED = re.compile(r"\[eval\] predicted (\d+) images, (\d+) detections")


def _pairs(text: str) -> dict[str, float]:
    """``"disk=1.0000, holes=nan"`` -> ``{"disk": 1.0, "holes": nan}``."""
    out = {}
    for part in text.split(","):
        if "=" in part:
            name, value = part.strip().split("=", 1)
            out[name.strip()] = number(value)
    return out


def parse_peer_log(text: str, source: str = "the peer log") -> dict:
    """The peer's output -> the common shape. Raises ValueError naming ``source`` when
    the result lines are missing (the run failed or the log is cut short)."""
    result = empty_result()
    found = set()
    for line in text.splitlines():
        line = line.strip()
        m = _RESULT.search(line)
        if m:
            kind = m.group(1)
            result[kind] = {"AP": number(m.group(2)), "AP50": number(m.group(3)),
                            "AP75": number(m.group(4)), "AP_small": NAN,
                            "per_class_AP50": _pairs(m.group(5)),
                            "per_class_AP": _pairs(m.group(6))}
            found.add(kind)
            continue
        m = _TRAIN_DONE.search(line)
        if m:
            result["steps"] = float(m.group(1))
            result["train_s"] = float(m.group(2)) * 60.0
            result["s_per_step"] = float(m.group(3))
            continue
        m = _PREDICTED.search(line)
        if m and int(m.group(1)) > 0:
            result["dets_per_img"] = int(m.group(2)) / int(m.group(1))
    missing = [k for k in IOU_TYPES if k not in found]
    if missing:
        raise ValueError(f"{source}: no '[result] {missing[0]}:' line; is it the complete "
                         "stdout of peer_quality_torchvision.py?")
    result["defect_segm_AP50"] = defect_mean(result["segm"]["per_class_AP50"])
    return result


# ---- showing -------------------------------------------------------------------------------
def key_name(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def figures(result: Mapping[str, Any], classes: Iterable[str] | None = None
            ) -> dict[str, float]:
    """The flat figures, in display order: ``segm_AP``, ..., ``holes_AP50`` (segm),
    ``bbox_holes_AP50``, ..., ``dets_per_img``, ``s_per_step``, ``train_s``, ``wall_s``."""
    segm, bbox = result["segm"], result["bbox"]
    if classes is None:
        classes = list(segm["per_class_AP50"]) + list(bbox["per_class_AP50"])
    classes = ordered_classes(classes)
    out = {"segm_AP": segm["AP"], "segm_AP50": segm["AP50"], "segm_AP75": segm["AP75"],
           "segm_APs": segm["AP_small"], "defect_segm_AP50": result["defect_segm_AP50"]}
    for c in classes:
        out[f"{key_name(c)}_AP50"] = segm["per_class_AP50"].get(c, NAN)
    for c in classes:
        out[f"{key_name(c)}_AP"] = segm["per_class_AP"].get(c, NAN)
    out.update({"bbox_AP": bbox["AP"], "bbox_AP50": bbox["AP50"], "bbox_AP75": bbox["AP75"],
                "bbox_APs": bbox["AP_small"],
                "defect_bbox_AP50": defect_mean(bbox["per_class_AP50"])})
    for c in classes:
        out[f"bbox_{key_name(c)}_AP50"] = bbox["per_class_AP50"].get(c, NAN)
    for c in classes:
        out[f"bbox_{key_name(c)}_AP"] = bbox["per_class_AP"].get(c, NAN)
    for key in ("dets_per_img", "part_catch_rate", "part_false_reject_rate", "steps",
                "s_per_step", "train_s", "wall_s"):
        out[key] = number(result.get(key))
    if finite(out["steps"]):
        out["steps"] = int(out["steps"])
    return out


def ratios(ours: Mapping[str, float], peer: Mapping[str, float]) -> dict[str, float]:
    """ours / peer per figure; NaN where either is missing or the peer's is 0."""
    return {k: (v / peer[k] if finite(v) and finite(peer.get(k, NAN)) and peer[k] != 0
                else NAN) for k, v in ours.items()}


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan"
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


_LABELS = {"segm_APs": "segm AP_small", "bbox_APs": "bbox AP_small",
           "dets_per_img": "detections / image", "s_per_step": "training s / step",
           "train_s": "training s", "wall_s": "wall s (whole run)", "steps": "steps",
           "part_catch_rate": "defective parts caught", "part_false_reject_rate":
           "good parts rejected"}


def label_of(key: str) -> str:
    """``holes_AP50`` -> ``segm AP50 holes``, ``bbox_AP`` -> ``bbox AP``, ..."""
    if key in _LABELS:
        return _LABELS[key]
    if key.startswith("defect_"):
        kind, stat = key[len("defect_"):].split("_", 1)
        return f"{kind} {stat} defects"
    kind, rest = ("bbox", key[5:]) if key.startswith("bbox_") else \
        ("segm", key[5:] if key.startswith("segm_") else key)
    for stat in ("_AP50", "_AP"):
        if rest.endswith(stat) and rest != stat[1:]:
            return f"{kind} {stat[1:]} {rest[:-len(stat)]}"
    return f"{kind} {rest}"


def table(ours: Mapping[str, float], peer: Mapping[str, float] | None = None) -> str:
    """A fixed-width table: figure, ours [, peer, ours/peer]."""
    head = f"{'figure':<24}{'ours':>10}"
    if peer is not None:
        head += f"{'peer':>10}{'ours/peer':>11}"
        ratio = ratios(ours, peer)
    lines = [head, "-" * len(head)]
    for key, value in ours.items():
        row = f"{label_of(key):<24}{fmt(value):>10}"
        if peer is not None:
            row += f"{fmt(peer.get(key, NAN)):>10}{fmt(ratio[key]):>11}"
        lines.append(row)
    return "\n".join(lines)


LINE_KEYS = ("segm_AP", "segm_AP50", "segm_APs", "defect_segm_AP50")
PEER_LINE_KEYS = ("segm_AP", "segm_AP50", "defect_segm_AP50", "bbox_AP50", "s_per_step")


def quality_line(settings: Mapping[str, Any], ours: Mapping[str, float],
                 peer: Mapping[str, float] | None = None) -> str:
    """``quality label=... steps=... s_per_step=... segm_AP=... holes_AP50=... ...``"""
    parts = [f"{k}={fmt(v)}" for k, v in settings.items()]
    for key in ("s_per_step", "train_s", "wall_s", *LINE_KEYS):
        parts.append(f"{key}={fmt(ours[key])}")
    for key, value in ours.items():
        per_class_segm = key.endswith(("_AP50", "_AP")) and not key.startswith(
            ("segm_", "bbox_", "defect_"))
        if per_class_segm:
            parts.append(f"{key}={fmt(value)}")
    for key in ("bbox_AP", "bbox_AP50", "bbox_APs", "dets_per_img", "part_catch_rate",
                "part_false_reject_rate"):
        parts.append(f"{key}={fmt(ours.get(key, NAN))}")
    if peer is not None:
        parts += [f"peer_{key}={fmt(peer.get(key, NAN))}" for key in PEER_LINE_KEYS]
    return "quality " + " ".join(parts)


def json_ready(value: Any) -> Any:
    """NaN -> None, recursively (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
