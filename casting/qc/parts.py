"""Part-level evaluation: how often a policy catches defective parts and rejects good ones.

Each labelled image is one part. Its truth is its image tag where it has one (``bad`` or
``good``, as Supervisely projects carry them, in any letter case), otherwise ``bad`` when it
has at least one annotated object of a class other than the policy's part class. For a
policy, with the detections of every image:

* ``catch_rate``: defective parts rejected / defective parts (``None`` without any);
* ``false_reject_rate``: good parts rejected / good parts (``None`` without any);
* ``curve``: both rates when every rule's ``min_score`` is set to each threshold in turn.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from casting.qc.policy import Policy
from casting.qc.verdict import judge

__all__ = ["part_truth", "part_evaluation", "CURVE_THRESHOLDS"]

CURVE_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 .. 0.95


def part_truth(record: Any, class_names: Sequence[str], part_class: str | None) -> tuple[bool, str]:
    """(is the part defective, where that came from: ``"tag"`` or ``"annotations"``)."""
    tags = {str(t).strip().lower() for t in getattr(record, "tags", ()) or ()}
    if "bad" in tags and "good" not in tags:
        return True, "tag"
    if "good" in tags and "bad" not in tags:
        return False, "tag"
    defective = any(class_names[inst.class_id - 1] != part_class and not inst.iscrowd
                    for inst in record.instances)
    return defective, "annotations"


def _rates(rejected: np.ndarray, bad: np.ndarray) -> tuple[float | None, float | None]:
    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    catch = round(float(rejected[bad].sum()) / n_bad, 6) if n_bad else None
    false_reject = round(float(rejected[~bad].sum()) / n_good, 6) if n_good else None
    return catch, false_reject


def part_evaluation(records: Sequence[Any], detections: Sequence[dict[str, Any]],
                    policy: Policy, thresholds: Sequence[float] = CURVE_THRESHOLDS,
                    ) -> dict[str, Any]:
    """The figures in the module docstring. ``detections``: one ``model.detect`` dict per
    record (``class_ids``, ``scores``, ``masks``), scored down to at least the lowest
    threshold used."""
    if len(records) != len(detections):
        raise ValueError(f"{len(records)} records but {len(detections)} detection sets")
    truths = [part_truth(r, policy.class_names, policy.part_class) for r in records]
    bad = np.array([t for t, _ in truths], dtype=bool)

    def verdicts(p: Policy) -> np.ndarray:
        return np.array([judge(p, d["class_ids"], d["scores"], d["masks"]).rejected
                         for d in detections], dtype=bool)

    rejected = verdicts(policy)
    catch, false_reject = _rates(rejected, bad)
    curve = []
    for t in thresholds:
        c, f = _rates(verdicts(policy.with_min_score(float(t))), bad)
        curve.append({"min_score": float(t), "catch_rate": c, "false_reject_rate": f})
    return {
        "policy": policy.source,
        "num_parts": len(records), "num_defective": int(bad.sum()),
        "num_good": int((~bad).sum()),
        "truth_from_tags": sum(1 for _, src in truths if src == "tag"),
        "rejected": int(rejected.sum()),
        "catch_rate": catch, "false_reject_rate": false_reject,
        "missed": [getattr(r, "image_id", str(i)) for i, r in enumerate(records)
                   if bad[i] and not rejected[i]],
        "falsely_rejected": [getattr(r, "image_id", str(i)) for i, r in enumerate(records)
                             if not bad[i] and rejected[i]],
        "curve": curve,
    }
