"""Tolerant converters from what SageMaker sends to the values ``casting.hparams`` keeps.

A hyperparameter's value may arrive as plain text (``3``, ``1e-3``), JSON-encoded once or
more (``"\\"3\\""``), ``True`` / ``False``, JSON or a Python repr (``{'a': 1}``), or, for a
JSON object, as the sagemaker-training toolkit prints it (``k1=v1,k2=v2``). Each ``to_*``
function takes any of these and returns one type, or raises ValueError saying what it got.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any


def _unwrap(value: Any) -> Any:
    """Strip JSON string encodings: ``'"\\"0.01\\""'`` -> ``'0.01'``."""
    for _ in range(8):
        if not isinstance(value, str):
            return value
        text = value.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            try:
                decoded = json.loads(text) if text[0] == '"' else ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
            if decoded == value:
                return decoded
            value = decoded
            continue
        return text
    return value


def _structured(value: Any) -> Any:
    """JSON first, then a Python literal (``{'a': 1}``, ``[1, 2]``, ``True``)."""
    value = _unwrap(value)
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass
    return _toolkit_mapping(value)


def _toolkit_mapping(text: str) -> Any:
    """The sagemaker-training toolkit passes a JSON object hyperparameter as
    ``k1=v1,k2=v2`` with each value as Python prints it: -> dict, or ``text`` unchanged."""
    if not re.match(r"^[A-Za-z_]\w*=", text):
        return text
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    out: dict[str, Any] = {}
    key = None
    for piece in pieces:
        name, eq, raw = piece.partition("=")
        if eq and re.fullmatch(r"[A-Za-z_]\w*", name):
            key, out[name] = name, raw
        elif key is not None:  # a comma inside an unquoted string value
            out[key] += "," + piece
    for name, raw in out.items():
        try:
            out[name] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            pass
    return out


def to_bool(value: Any) -> bool:
    value = _unwrap(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r} (use True or False)")


def to_float(value: Any) -> float:
    value = _unwrap(value)
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {value!r}") from None
    if math.isnan(out) or math.isinf(out):
        raise ValueError(f"not a finite number: {value!r}")
    return out


def to_int(value: Any) -> int:
    value = _unwrap(value)
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        pass
    out = to_float(value)
    if not out.is_integer():
        raise ValueError(f"not an integer: {value!r}")
    return int(out)


def to_str(value: Any) -> str:
    value = _unwrap(value)
    return str(value)


def to_optional_str(value: Any) -> str | None:
    value = _unwrap(value)
    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return None
    return str(value)


def to_str_list(value: Any) -> list[str] | None:
    value = _structured(value)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(_unwrap(item)).strip() for item in value]
    else:
        raise ValueError(f"not a list of names: {value!r}")
    items = [item for item in items if item]
    if not items:
        raise ValueError(f"empty list of names: {value!r}")
    return items


def to_float_pair(value: Any) -> list[float] | None:
    """'[0.5, 1.0]', '0.5,1.0' or a list of two numbers -> [0.5, 1.0]; empty -> None."""
    value = _structured(value)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = [item for item in value.split(",") if item.strip()]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"not a pair of numbers [min, max]: {value!r}")
    return [to_float(item) for item in value]


def to_dict(value: Any) -> dict[str, Any]:
    value = _structured(value)
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object / dict: {value!r}")
    return {str(k): v for k, v in value.items()}


def to_policy(value: Any) -> dict[str, Any] | str | None:
    """A policy: a JSON object (or its text), or the path of a JSON file; None: default."""
    value = _structured(value)
    return value if isinstance(value, dict) else to_optional_str(value)


def to_schedule(value: Any) -> list[dict[str, Any]]:
    value = _structured(value)
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"not a list of stages: {value!r}")
    stages = []
    for stage in value:
        stage = _structured(stage)
        if not isinstance(stage, dict):
            raise ValueError(f"a stage must be an object like {{\"epochs\": 2}}, not {stage!r}")
        stages.append(dict(stage))
    return stages
