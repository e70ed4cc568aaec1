"""The Flask app: /ping, /execution-parameters and /invocations on a `ModelHolder`."""

from __future__ import annotations

import json
import logging
import time
import traceback
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from casting.inference import (
    MAX_PAYLOAD_BYTES,
    ImageTooLargeError,
    InferenceError,
    ParameterError,
    decode_image,
    parse_classes,
    parse_mask_format,
    parse_min_score,
)
from casting.qc import PolicyError
from casting.serving.holder import ModelHolder
from casting.serving.parsing import (
    CUSTOM_ATTRIBUTES_HEADER, JSON_TYPES, PARAMETER_NAMES, RAW_IMAGE_TYPES, RESPONSE_TYPES,
    ApiError, _drain, _env_int, _parse_custom_attributes, _parse_json_body, _read_body,
)

log = logging.getLogger("casting.serving")


def _error(status: int, message: str) -> Response:
    resp = Response(
        json.dumps({"error": message, "status": status}),
        status=status,
        mimetype="application/json",
    )
    return resp


def create_app(
    holder: ModelHolder,
    *,
    workers: int = 1,
    request_timeout: float = 60.0,
    max_payload: int = MAX_PAYLOAD_BYTES,
    max_instances: int | None = None,
) -> Flask:
    app = Flask("casting.serving")
    app.config["MAX_CONTENT_LENGTH"] = max_payload
    max_instances = max_instances or _env_int("CASTING_MAX_INSTANCES", 16)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        resp = _error(exc.code or 500, exc.description or exc.name)
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            resp.headers["Allow"] = ", ".join(exc.valid_methods)
        return resp

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return _error(exc.status, exc.message)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.error("unhandled error on %s %s: %s\n%s", request.method, request.path, exc,
                  traceback.format_exc())
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.get("/ping")
    def ping() -> Response:
        if holder.ready:
            return Response('{"status": "ok"}', status=200, mimetype="application/json")
        return _error(503, "model loading")

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return Response(
            json.dumps({
                "MaxConcurrentTransforms": workers,
                "BatchStrategy": "SINGLE_RECORD",
                "MaxPayloadInMB": max_payload // (1024 * 1024),
            }),
            mimetype="application/json",
        )

    @app.post("/invocations")
    def invocations() -> Response:
        content_type, response_type = _negotiate(request, max_payload)
        body = _read_body(request, max_payload)
        encoded, batched, params = _images_and_parameters(request, body, content_type,
                                                          max_instances)
        predictor = holder.get(timeout=request_timeout)
        try:
            min_score = parse_min_score(params.get("min_score"))
            mask_format = parse_mask_format(params.get("mask_format"))
            classes = parse_classes(params.get("classes"), predictor.class_names)
            policy = predictor.policy_for(_request_policy(params.get("policy")))
            tile = predictor.tile_for(params.get("tile"))
        except (ParameterError, PolicyError) as exc:
            raise ApiError(400, str(exc)) from None
        if response_type == "image/png" and len(encoded) != 1:
            raise ApiError(400, f"Accept: image/png answers with one overlay; got {len(encoded)} images")
        images = _decode_images(encoded, batched, predictor.max_pixels)

        started = time.monotonic()
        judged = predictor.judge(images, min_score=min_score, classes=classes, policy=policy,
                                 tile=tile)
        elapsed_ms = (time.monotonic() - started) * 1000.0
        resp = _render(predictor, images, judged, response_type, mask_format, batched)
        resp.headers["X-Inference-Ms"] = f"{elapsed_ms:.1f}"
        return resp

    return app


def _negotiate(req: Any, max_payload: int) -> tuple[str, str]:
    """(request content type, response type) of an /invocations request, or ApiError 413
    (too large), 415 (content type) or 406 (Accept). The body is drained before an error,
    so the client reads the answer."""
    length = req.content_length
    if length is not None and length > max_payload:
        _drain(req, length)
        raise ApiError(413, f"payload is {length} bytes; the limit is {max_payload} bytes (6 MB)")
    content_type = (req.mimetype or "").lower()
    if content_type not in RAW_IMAGE_TYPES + JSON_TYPES:
        _drain(req, length or 0)
        raise ApiError(
            415,
            f"unsupported Content-Type {req.content_type or '(none)'!r}; "
            f"use one of {list(RAW_IMAGE_TYPES + JSON_TYPES)}",
        )
    if not req.headers.get("Accept", "").strip():
        return content_type, "application/json"
    response_type = req.accept_mimetypes.best_match(RESPONSE_TYPES)
    if response_type is None:
        _drain(req, length or 0)
        raise ApiError(406, f"cannot answer with Accept {req.headers.get('Accept')!r}; "
                            f"use one of {list(RESPONSE_TYPES)}")
    return content_type, response_type


def _images_and_parameters(req: Any, body: bytes, content_type: str, max_instances: int
                           ) -> tuple[list[bytes], bool, dict[str, Any]]:
    """(encoded images, whether it was an "instances" request, parameters): the query
    string first, then the custom attributes header, then the JSON body's own."""
    params: dict[str, Any] = {k: v for k, v in req.args.items() if k in PARAMETER_NAMES}
    params.update(_parse_custom_attributes(req.headers.get(CUSTOM_ATTRIBUTES_HEADER, "")))
    if content_type in JSON_TYPES:
        encoded, batched, json_params = _parse_json_body(body, max_instances)
        params.update(json_params)
        return encoded, batched, params
    if not body:
        raise ApiError(400, "empty body; send the image bytes")
    return [body], False, params


def _decode_images(encoded: list[bytes], batched: bool, max_pixels: int) -> list[Any]:
    images = []
    for i, data in enumerate(encoded):
        where = "image" if not batched else f"instances[{i}]"
        try:
            images.append(decode_image(data, max_pixels))
        except ImageTooLargeError as exc:
            raise ApiError(413, f"{where}: {exc}") from None
        except InferenceError as exc:
            raise ApiError(400, f"{where}: {exc}") from None
    return images


def _request_policy(value: Any) -> Any:
    """A request's ``policy`` parameter: a JSON object (in the body, or as JSON text in the
    query string or custom attributes); never a path on the server."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.lstrip().startswith("{"):
        return value
    raise PolicyError(f"policy must be a JSON object (see docs/serving.md), not {value!r}")


def _render(predictor: Any, images: list[Any], judged: list[Any], response_type: str,
            mask_format: str, batched: bool) -> Response:
    """The overlay PNG of the one image (with its verdict), or the detections and verdicts
    as JSON."""
    if response_type == "image/png":
        from casting.visualize import to_png_bytes

        raw, verdict = judged[0]
        resp = Response(to_png_bytes(predictor.overlay(images[0], raw, verdict=verdict)),
                        mimetype="image/png")
        resp.headers["X-Detections"] = str(len(raw.class_ids))
        resp.headers["X-Verdict"] = verdict.verdict
        return resp
    results = [{"width": r.width, "height": r.height,
                "detections": predictor.format(r, mask_format), **v.to_dict()}
               for r, v in judged]
    payload: dict[str, Any] = {"predictions": results} if batched else results[0]
    return Response(json.dumps(payload, separators=(",", ":")), mimetype="application/json")
