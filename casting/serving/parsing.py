"""Reading an /invocations request: content types, parameters (query string, SageMaker's
custom attributes header, JSON), base64 images, bodies with or without a Content-Length,
and integer settings from the environment. Problems raise `ApiError` (status, message)."""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any
from urllib.parse import unquote_plus

RAW_IMAGE_TYPES = ("image/jpeg", "image/jpg", "image/png", "application/x-image",
                   "application/octet-stream")
JSON_TYPES = ("application/json",)
RESPONSE_TYPES = ("application/json", "image/png")
PARAMETER_NAMES = ("min_score", "classes", "mask_format", "policy", "tile")
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
# Bodies at most this large are read and discarded before a 413 is sent, so the client gets
# the answer instead of a connection reset; beyond it the connection is simply closed.
_DRAIN_LIMIT = 64 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise SystemExit(f"{name} must be >= {minimum}, not {value}")
    return value


def _parse_custom_attributes(header: str) -> dict[str, str]:
    """``min_score=0.5;classes=holes,chipping;mask_format=none`` -> dict (unknown keys ignored)."""
    params: dict[str, str] = {}
    for part in header.replace("&", ";").split(";"):
        if "=" not in part:
            continue
        key, value = part.split("=", 1)
        key = key.strip().lower()
        if key in PARAMETER_NAMES:
            params[key] = unquote_plus(value.strip())
    return params


def _b64_image(value: Any, where: str) -> bytes:
    if isinstance(value, dict):
        for key in ("b64", "image", "data"):
            if key in value:
                return _b64_image(value[key], where)
        raise ApiError(400, f"{where}: expected a base64 string or {{\"b64\": \"...\"}}")
    if not isinstance(value, str):
        raise ApiError(400, f"{where}: expected a base64-encoded image string, got {type(value).__name__}")
    text = value.strip()
    if text.startswith("data:") and "," in text:  # data URL
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    if not text:
        raise ApiError(400, f"{where}: empty image string")
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"{where}: not valid base64 ({exc})") from None


def _parse_json_body(body: bytes, max_instances: int) -> tuple[list[bytes], bool, dict[str, Any]]:
    """-> (encoded images, whether it was an "instances" request, parameters)."""
    if not body.strip():
        raise ApiError(400, "empty JSON body; expected {\"image\": \"<base64>\"} or {\"instances\": [...]}")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, f"JSON body must be an object with \"image\" or \"instances\", got {type(doc).__name__}")
    allowed = {"image", "instances", "parameters", *PARAMETER_NAMES}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ApiError(400, f"unknown JSON keys {unknown}; allowed: {sorted(allowed)}")
    params: dict[str, Any] = {}
    if "parameters" in doc:
        if not isinstance(doc["parameters"], dict):
            raise ApiError(400, "\"parameters\" must be an object")
        bad = sorted(set(doc["parameters"]) - set(PARAMETER_NAMES))
        if bad:
            raise ApiError(400, f"unknown parameters {bad}; allowed: {list(PARAMETER_NAMES)}")
        params.update(doc["parameters"])
    params.update({k: doc[k] for k in PARAMETER_NAMES if k in doc})
    if ("image" in doc) == ("instances" in doc):
        raise ApiError(400, "JSON body needs exactly one of \"image\" (base64) or \"instances\" (a list)")
    if "image" in doc:
        return [_b64_image(doc["image"], "image")], False, params
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise ApiError(400, "\"instances\" must be a non-empty list of base64 images")
    if len(instances) > max_instances:
        raise ApiError(400, f"{len(instances)} instances; at most {max_instances} per request")
    return [_b64_image(v, f"instances[{i}]") for i, v in enumerate(instances)], True, params


def _read_body(req: Any, max_payload: int) -> bytes:
    """The request body, at most ``max_payload`` bytes (413 beyond), with or without a
    Content-Length (chunked transfer encoding)."""
    if req.content_length is not None:
        return req.get_data(cache=False)
    stream = req.environ.get("wsgi.input")
    if stream is None:
        return b""
    parts, total = [], 0
    while True:
        chunk = stream.read(1 << 16)
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > max_payload:
            _drain(req, _DRAIN_LIMIT)
            raise ApiError(413, f"payload is over {max_payload} bytes (6 MB), the limit")
        parts.append(chunk)


def _drain(req: Any, length: int) -> None:
    """Read and discard a body we will not use, so the client can read our error response."""
    if length <= 0 or length > _DRAIN_LIMIT:
        return
    stream = req.environ.get("wsgi.input")
    if stream is None:
        return
    remaining = length
    try:
        while remaining > 0:
            chunk = stream.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
    except Exception:  # noqa: BLE001 - the client went away; nothing to do
        pass
