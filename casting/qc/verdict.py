"""Accept or reject one part: a `Policy` applied to one image's detections.

:func:`judge` takes the detections as arrays (1-based class ids, scores, full-size boolean
masks), finds the part (the union of its class's detections scoring at least
``part_min_score``), measures each defect's depth from the part's outer edge where a rule
has a zone, and returns a `Verdict`: ``accept`` or ``reject``, with one reason per broken
rule (which class, which rule, how many, which detections by their index in the input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from casting.qc.policy import Policy, Rule, Zone

__all__ = ["Verdict", "judge", "part_depth"]

ACCEPT, REJECT = "accept", "reject"


@dataclass
class Verdict:
    verdict: str  # "accept" or "reject"
    reasons: list[dict[str, Any]] = field(default_factory=list)
    defects: dict[str, int] = field(default_factory=dict)  # counted detections per class
    largest_area_px: dict[str, int] = field(default_factory=dict)
    part_found: bool = False

    @property
    def rejected(self) -> bool:
        return self.verdict == REJECT

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": self.reasons, "defects": self.defects,
                "largest_area_px": self.largest_area_px, "part_found": self.part_found}

    def summary(self) -> str:
        """One line: ``ACCEPT`` or ``REJECT: 2 chipping > 1; ...``."""
        if not self.rejected:
            return "ACCEPT"
        return "REJECT: " + "; ".join(r["message"] for r in self.reasons)


def part_depth(part_mask: np.ndarray) -> np.ndarray:
    """Signed distance in pixels from the part's outer edge: positive inside the part,
    negative outside; holes inside the part mask count as part (filled first)."""
    from scipy import ndimage

    filled = ndimage.binary_fill_holes(np.asarray(part_mask, dtype=bool))
    inside = ndimage.distance_transform_edt(filled)
    outside = ndimage.distance_transform_edt(~filled)
    return (inside - outside).astype(np.float32)


def _zone_bounds_px(zone: Zone, policy: Policy, part_area: float) -> tuple[float, float]:
    if zone.unit == "px":
        scale = 1.0
    elif zone.unit == "mm":
        scale = float(policy.pixels_per_mm)
    else:  # radius: the radius of a disk with the filled part's area
        scale = math.sqrt(part_area / math.pi)
    return zone.min_depth * scale, zone.max_depth * scale


def _in_zone(mask: np.ndarray, depth: np.ndarray, bounds: tuple[float, float],
             min_overlap: float) -> bool:
    values = depth[mask]
    if values.size == 0:
        return False
    inside = np.count_nonzero((values >= bounds[0]) & (values <= bounds[1]))
    return inside >= min_overlap * values.size


def _counted(rule: Rule, k: int, area: int, score: float, masks, depth, bounds) -> bool:
    if score < rule.min_score or area < rule.min_area_px:
        return False
    if rule.zone is None or depth is None:  # no part to measure from: counted (conservative)
        return True
    return _in_zone(masks[k], depth, bounds[rule.zone], rule.min_overlap)


def judge(policy: Policy, class_ids: Any, scores: Any, masks: Any) -> Verdict:
    """The verdict on one image's detections (see the module docstring)."""
    class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    masks = np.asarray(masks, dtype=bool)
    names = policy.class_names
    areas = masks.reshape(len(class_ids), -1).sum(axis=1) if len(class_ids) else np.zeros(0)

    part_mask, depth, bounds = None, None, {}
    if policy.part_class is not None:
        pid = names.index(policy.part_class) + 1
        picked = (class_ids == pid) & (scores >= policy.part_min_score)
        if picked.any():
            part_mask = masks[picked].any(axis=0)
    if part_mask is not None and any(r.zone for r in policy.rules):
        depth = part_depth(part_mask)
        filled_area = float(np.count_nonzero(depth > 0)) or float(part_mask.sum())
        bounds = {name: _zone_bounds_px(zone, policy, filled_area)
                  for name, zone in policy.zones.items()}

    verdict = Verdict(ACCEPT, part_found=part_mask is not None)
    if policy.require_part and part_mask is None:
        verdict.reasons.append({
            "rule": "require_part", "class_name": policy.part_class, "count": 0,
            "detections": [],
            "message": f"no {policy.part_class} found (score >= {policy.part_min_score:g})"})
    counted: dict[str, set[int]] = {}
    for index, rule in enumerate(policy.rules):
        cid = names.index(rule.class_name) + 1
        hits = [int(k) for k in np.flatnonzero(class_ids == cid)
                if _counted(rule, k, int(areas[k]), float(scores[k]), masks, depth, bounds)]
        counted.setdefault(rule.class_name, set()).update(hits)
        if len(hits) > rule.max_count:
            verdict.reasons.append({
                "rule": index, "class_name": rule.class_name, "count": len(hits),
                "max_count": rule.max_count, "detections": hits,
                "message": (f"{len(hits)} {rule.class_name} ({rule.describe()}) > "
                            f"{rule.max_count} allowed")})
    for name, hits in counted.items():
        verdict.defects[name] = len(hits)
        verdict.largest_area_px[name] = int(max((areas[k] for k in hits), default=0))
    if verdict.reasons:
        verdict.verdict = REJECT
    return verdict
