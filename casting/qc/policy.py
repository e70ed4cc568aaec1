"""The acceptance policy: which detected defects reject a part, as a small JSON document.

A policy (all keys optional; shown with their defaults where they have one)::

    {
      "part_class": "disk",          # the class that is the part itself; never a defect
      "part_min_score": 0.5,         # a part detection counts from this score
      "require_part": true,          # no part found -> reject ("the camera saw no part")
      "pixels_per_mm": null,         # needed only by *_mm2 areas and "mm" zones
      "default": {"min_score": 0.5, "min_area_px": 0, "max_count": 0},
      "classes": {                   # per defect class: one rule or a list of rules
        "chipping": [{"min_area_px": 200, "max_count": 0},
                     {"max_count": 3}],
        "deburring": {"zone": "rim"},
        "holes": []                  # an empty list: this class never rejects
      },
      "zones": {"rim": {"unit": "radius", "min_depth": -1.0, "max_depth": 0.2}}
    }

A rule counts the detections of its class that score at least ``min_score``, cover at least
``min_area_px`` pixels (or ``min_area_mm2``) and, with a ``zone``, lie mostly (at least
``min_overlap``, 0.5, of their mask) in that zone; the part is rejected when a rule counts
more than ``max_count``. All bounds are inclusive. A class the policy does not name (other than
the part class) gets one rule made of ``default``; a rule's missing keys come from
``default``. A zone is a band of *depth*: the signed distance from the part's outer edge
(positive inside the part, negative outside it, holes in the part mask filled), in pixels
(``px``), millimetres (``mm``) or fractions of the part's radius (``radius``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from casting.errors import Explained

__all__ = ["PolicyError", "Rule", "Zone", "Policy", "load_policy", "default_policy",
           "POLICY_FILE"]

POLICY_FILE = "policy.json"  # the name of the policy inside a model folder
_TOP_KEYS = {"part_class", "part_min_score", "require_part", "pixels_per_mm", "default",
             "classes", "zones", "description"}
_RULE_KEYS = {"min_score", "min_area_px", "min_area_mm2", "max_count", "zone", "min_overlap"}
_ZONE_KEYS = {"unit", "min_depth", "max_depth"}
_UNITS = ("px", "mm", "radius")


class PolicyError(Explained, ValueError):
    """A policy that cannot be used; the message names where it came from and what to fix."""


@dataclass(frozen=True)
class Zone:
    name: str
    unit: str = "px"
    min_depth: float = -math.inf
    max_depth: float = math.inf


@dataclass(frozen=True)
class Rule:
    class_name: str
    min_score: float = 0.5
    min_area_px: float = 0.0
    max_count: int = 0
    zone: str | None = None
    min_overlap: float = 0.5

    def describe(self) -> str:
        parts = [f"score >= {self.min_score:g}"]
        if self.min_area_px > 0:
            parts.append(f"area >= {self.min_area_px:g} px")
        if self.zone:
            parts.append(f"in zone {self.zone!r}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Policy:
    """A checked policy for one model's class names (see the module docstring)."""

    class_names: tuple[str, ...]
    rules: tuple[Rule, ...]
    part_class: str | None = None
    part_min_score: float = 0.5
    require_part: bool = True
    pixels_per_mm: float | None = None
    zones: Mapping[str, Zone] = field(default_factory=dict)
    source: str = "the default policy"
    document: Mapping[str, Any] = field(default_factory=dict)

    def with_min_score(self, score: float) -> "Policy":
        """The same policy with every rule's ``min_score`` set to ``score`` (for curves)."""
        return replace(self, rules=tuple(replace(r, min_score=score) for r in self.rules))

    @property
    def lowest_score(self) -> float:
        """The lowest score any rule (or the part) looks at."""
        scores = [r.min_score for r in self.rules]
        if self.part_class:
            scores.append(self.part_min_score)
        return min(scores) if scores else 1.0

    def to_json(self) -> str:
        return json.dumps(dict(self.document), indent=2)


def _number(value: Any, where: str, source: str, lo: float | None = None,
            hi: float | None = None, integer: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and lo is not None:
        ok = value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        kind = "an integer" if integer else "a number"
        bounds = "" if lo is None else (f" in [{lo:g}, {hi:g}]" if hi is not None else f" >= {lo:g}")
        raise PolicyError(f"{source}: {where} must be {kind}{bounds}, not {value!r}")
    return int(value) if integer else float(value)


def _unknown(keys, allowed, where: str, source: str) -> None:
    extra = sorted(set(keys) - allowed)
    if extra:
        raise PolicyError(f"{source}: unknown key(s) {extra} in {where}; allowed: {sorted(allowed)}")


def _zone(name: str, spec: Any, pixels_per_mm: float | None, source: str) -> Zone:
    where = f"zones.{name}"
    if not isinstance(spec, Mapping):
        raise PolicyError(f"{source}: {where} must be an object like "
                          f'{{"unit": "radius", "min_depth": 0, "max_depth": 0.2}}')
    _unknown(spec, _ZONE_KEYS, where, source)
    unit = spec.get("unit", "px")
    if unit not in _UNITS:
        raise PolicyError(f"{source}: {where}.unit must be one of {list(_UNITS)}, not {unit!r}")
    if unit == "mm" and not pixels_per_mm:
        raise PolicyError(f"{source}: {where} is in mm; give \"pixels_per_mm\" (the camera's "
                          "scale) at the top of the policy")
    lo = _number(spec.get("min_depth", -1e18), f"{where}.min_depth", source)
    hi = _number(spec.get("max_depth", 1e18), f"{where}.max_depth", source)
    if lo > hi:
        raise PolicyError(f"{source}: {where}: min_depth {lo:g} > max_depth {hi:g}")
    return Zone(name, unit, -math.inf if lo <= -1e18 else lo, math.inf if hi >= 1e18 else hi)


def _rule(class_name: str, spec: Mapping[str, Any], defaults: Mapping[str, Any],
          zones: Mapping[str, Zone], pixels_per_mm: float | None, where: str,
          source: str) -> Rule:
    if not isinstance(spec, Mapping):
        raise PolicyError(f"{source}: {where} must be an object (a rule), not {spec!r}")
    _unknown(spec, _RULE_KEYS, where, source)
    merged = {**defaults, **spec}
    if "min_area_px" in spec and "min_area_mm2" in spec:
        raise PolicyError(f"{source}: {where} gives both min_area_px and min_area_mm2; keep one")
    if "min_area_px" in spec or "min_area_mm2" in spec:  # a rule's own area replaces the default's
        merged.pop("min_area_mm2" if "min_area_px" in spec else "min_area_px", None)
    area = _number(merged.get("min_area_px", 0), f"{where}.min_area_px", source, lo=0)
    if "min_area_mm2" in merged:
        mm2 = _number(merged["min_area_mm2"], f"{where}.min_area_mm2", source, lo=0)
        if not pixels_per_mm:
            raise PolicyError(f"{source}: {where}.min_area_mm2 needs \"pixels_per_mm\" (the "
                              "camera's scale) at the top of the policy")
        area = mm2 * pixels_per_mm ** 2
    zone = merged.get("zone")
    if zone is not None and zone not in zones:
        raise PolicyError(f"{source}: {where}.zone {zone!r} is not defined in \"zones\" "
                          f"({sorted(zones) or 'none defined'})")
    return Rule(class_name,
                min_score=_number(merged.get("min_score", 0.5), f"{where}.min_score", source, 0, 1),
                min_area_px=area,
                max_count=_number(merged.get("max_count", 0), f"{where}.max_count", source,
                                  lo=0, integer=True),
                zone=zone,
                min_overlap=_number(merged.get("min_overlap", 0.5), f"{where}.min_overlap",
                                    source, 0, 1))


def parse_policy(doc: Any, class_names: Sequence[str], source: str = "the policy") -> Policy:
    """A policy document (a dict, see the module docstring) -> a checked `Policy`."""
    class_names = tuple(class_names)
    if not isinstance(doc, Mapping):
        raise PolicyError(f"{source}: a policy is a JSON object, not {type(doc).__name__}")
    _unknown(doc, _TOP_KEYS, "the policy", source)
    part = doc.get("part_class", "disk" if "disk" in class_names else None)
    if part is not None and part not in class_names:
        raise PolicyError(f"{source}: part_class {part!r} is not a class of this model "
                          f"{list(class_names)}; use one of them or null")
    ppm = doc.get("pixels_per_mm")
    ppm = None if ppm is None else _number(ppm, "pixels_per_mm", source, lo=1e-9)
    zones_doc = doc.get("zones") or {}
    if not isinstance(zones_doc, Mapping):
        raise PolicyError(f"{source}: zones must be an object of named zones")
    if zones_doc and part is None:
        raise PolicyError(f"{source}: zones are measured from the part; set part_class")
    zones = {name: _zone(name, spec, ppm, source) for name, spec in zones_doc.items()}
    defaults = doc.get("default") or {}
    if not isinstance(defaults, Mapping):
        raise PolicyError(f"{source}: default must be an object (a rule)")
    _rule("default", defaults, {}, zones, ppm, "default", source)  # check it on its own
    classes_doc = doc.get("classes") or {}
    if not isinstance(classes_doc, Mapping):
        raise PolicyError(f"{source}: classes must be an object: class name -> rule(s)")
    for name in classes_doc:
        if name not in class_names:
            raise PolicyError(f"{source}: classes.{name}: not a class of this model "
                              f"{list(class_names)}")
        if name == part:
            raise PolicyError(f"{source}: classes.{name}: {name!r} is the part_class, not a "
                              "defect; remove its rules or change part_class")
    rules = []
    for name in class_names:
        if name == part:
            continue
        specs = classes_doc.get(name, [{}])
        specs = [specs] if isinstance(specs, Mapping) else specs
        if not isinstance(specs, list):
            raise PolicyError(f"{source}: classes.{name} must be a rule or a list of rules")
        for k, spec in enumerate(specs):
            where = f"classes.{name}" + (f"[{k}]" if len(specs) > 1 else "")
            rules.append(_rule(name, spec, defaults, zones, ppm, where, source))
    require = doc.get("require_part", part is not None)
    if not isinstance(require, bool):
        raise PolicyError(f"{source}: require_part must be true or false, not {require!r}")
    if require and part is None:
        raise PolicyError(f"{source}: require_part needs a part_class")
    return Policy(class_names, tuple(rules), part_class=part,
                  part_min_score=_number(doc.get("part_min_score", 0.5), "part_min_score",
                                         source, 0, 1),
                  require_part=require, pixels_per_mm=ppm, zones=zones, source=source,
                  document=dict(doc))


def default_policy(class_names: Sequence[str]) -> Policy:
    """Any defect scoring at least 0.5 rejects the part; no part found rejects it too."""
    return parse_policy({}, class_names, "the default policy")


def load_policy(value: Any, class_names: Sequence[str]) -> Policy:
    """A policy from a file path, a JSON string (starting with ``{``), a dict or a `Policy`.
    ``None`` or ``""``: the default policy."""
    if isinstance(value, Policy):
        if tuple(value.class_names) != tuple(class_names):
            return parse_policy(value.document, class_names, value.source)
        return value
    if value is None or (isinstance(value, str) and not value.strip()):
        return default_policy(class_names)
    if isinstance(value, Mapping):
        return parse_policy(value, class_names, "the policy given")
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str):
        raise PolicyError(f"a policy is a file path, a JSON object or a dict, not {text!r}")
    if text.lstrip().startswith("{"):
        source, body = "the policy given inline", text
    else:
        source = text
        try:
            with open(text, encoding="utf-8") as fh:
                body = fh.read()
        except OSError as exc:
            raise PolicyError(f"{text}: cannot read the policy file ({exc.strerror or exc}); "
                              "give a JSON file, or the JSON itself starting with '{'") from None
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{source}: not valid JSON ({exc})") from None
    return parse_policy(doc, class_names, source)
