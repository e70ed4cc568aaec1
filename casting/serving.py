"""The SageMaker hosting endpoint: a Flask WSGI app served by gunicorn.

Routes
  GET  /ping                  200 once this worker's model is loaded (503 while loading)
  POST /invocations           image/jpeg | image/png | application/x-image |
                              application/octet-stream (raw bytes) or application/json
                              ({"image": "<base64>"} or {"instances": [...]});
                              Accept: application/json (default) or image/png (overlay)
  GET  /execution-parameters  batch transform settings

Each gunicorn worker (a ``gthread`` worker, so /ping answers while an inference runs) loads
the model once, before it accepts connections; a worker whose model fails to load exits with
gunicorn's boot-error code, which stops the server. Client errors come
back as JSON ``{"error": "...", "status": N}`` and never take a worker down.

Environment: SAGEMAKER_BIND_TO_PORT (8080), SAGEMAKER_MODEL_SERVER_WORKERS (1),
SAGEMAKER_MODEL_SERVER_TIMEOUT (60 s), CASTING_SERVER_THREADS (32 per worker),
CASTING_MAX_IMAGE_PIXELS, CASTING_MAX_INSTANCES (16).
See docs/serving.md.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable
from urllib.parse import unquote_plus

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from casting.inference import (
    MAX_PAYLOAD_BYTES,
    ImageTooLargeError,
    InferenceError,
    ParameterError,
    Predictor,
    decode_image,
    parse_classes,
    parse_mask_format,
    parse_min_score,
    resolve_model_dir,
)

log = logging.getLogger("casting.serving")

DEFAULT_PORT = 8080
DEFAULT_MODEL_DIR = "/opt/ml/model"
# Threads per worker. Inference inside a worker runs one request at a time (a lock); the
# other threads wait cheaply. Many threads keep one free for /ping under load, so health
# checks answer fast even with dozens of requests queued.
DEFAULT_THREADS = 32
RAW_IMAGE_TYPES = ("image/jpeg", "image/jpg", "image/png", "application/x-image",
                   "application/octet-stream")
JSON_TYPES = ("application/json",)
RESPONSE_TYPES = ("application/json", "image/png")
PARAMETER_NAMES = ("min_score", "classes", "mask_format")
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


# ---- model holder ------------------------------------------------------------------------------
class ModelHolder:
    """Loads a Predictor once and hands it out once ready.

    Under gunicorn each worker calls ``load()`` in its ``post_worker_init`` hook, i.e. before
    it accepts its first connection, so a worker that answers /ping has its model.
    ``start()`` loads in a background thread instead (for embedding the app elsewhere).
    """

    def __init__(self, factory: Callable[[], Predictor]):
        self._factory = factory
        self._ready = threading.Event()
        self._predictor: Predictor | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def load(self) -> Predictor:
        with self._lock:
            if self._predictor is None:
                started = time.monotonic()
                try:
                    self._predictor = self._factory()
                except BaseException as exc:
                    self._error = exc
                    raise
                finally:
                    self._ready.set()
                log.info("model loaded in %.1f s (pid %d)", time.monotonic() - started, os.getpid())
            return self._predictor

    def start(self) -> None:
        def target() -> None:
            try:
                self.load()
            except BaseException as exc:  # noqa: BLE001 - reported through get()
                log.error("model failed to load: %s", exc)

        threading.Thread(target=target, name="model-loader", daemon=True).start()

    @property
    def ready(self) -> bool:
        return self._predictor is not None

    def get(self, timeout: float) -> Predictor:
        if not self._ready.wait(timeout):
            raise ApiError(503, f"model still loading after waiting {timeout:.0f} s")
        if self._predictor is None:
            raise ApiError(503, f"model failed to load: {self._error}")
        return self._predictor


# ---- request parsing ---------------------------------------------------------------------------
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


def _error(status: int, message: str) -> Response:
    resp = Response(
        json.dumps({"error": message, "status": status}),
        status=status,
        mimetype="application/json",
    )
    return resp


# ---- app ---------------------------------------------------------------------------------------
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
        length = request.content_length
        if length is not None and length > max_payload:
            _drain(request, length)
            raise ApiError(413, f"payload is {length} bytes; the limit is {max_payload} bytes (6 MB)")
        content_type = (request.mimetype or "").lower()
        if content_type not in RAW_IMAGE_TYPES + JSON_TYPES:
            _drain(request, length or 0)
            raise ApiError(
                415,
                f"unsupported Content-Type {request.content_type or '(none)'!r}; "
                f"use one of {list(RAW_IMAGE_TYPES + JSON_TYPES)}",
            )
        accept = request.accept_mimetypes
        if not request.headers.get("Accept", "").strip():
            response_type = "application/json"
        else:
            response_type = accept.best_match(RESPONSE_TYPES)
        if response_type is None:
            _drain(request, length or 0)
            raise ApiError(406, f"cannot answer with Accept {request.headers.get('Accept')!r}; "
                                f"use one of {list(RESPONSE_TYPES)}")
        body = _read_body(request, max_payload)

        params: dict[str, Any] = {}
        params.update({k: v for k, v in request.args.items() if k in PARAMETER_NAMES})
        params.update(_parse_custom_attributes(request.headers.get(CUSTOM_ATTRIBUTES_HEADER, "")))
        if content_type in JSON_TYPES:
            encoded, batched, json_params = _parse_json_body(body, max_instances)
            params.update(json_params)
        else:
            if not body:
                raise ApiError(400, "empty body; send the image bytes")
            encoded, batched = [body], False

        predictor = holder.get(timeout=request_timeout)
        try:
            min_score = parse_min_score(params.get("min_score"))
            mask_format = parse_mask_format(params.get("mask_format"))
            classes = parse_classes(params.get("classes"), predictor.class_names)
        except ParameterError as exc:
            raise ApiError(400, str(exc)) from None
        if response_type == "image/png" and len(encoded) != 1:
            raise ApiError(400, f"Accept: image/png answers with one overlay; got {len(encoded)} images")

        images = []
        for i, data in enumerate(encoded):
            where = "image" if not batched else f"instances[{i}]"
            try:
                images.append(decode_image(data, predictor.max_pixels))
            except ImageTooLargeError as exc:
                raise ApiError(413, f"{where}: {exc}") from None
            except InferenceError as exc:
                raise ApiError(400, f"{where}: {exc}") from None

        started = time.monotonic()
        raws = predictor.detect(images, min_score=min_score, classes=classes)
        elapsed_ms = (time.monotonic() - started) * 1000.0

        if response_type == "image/png":
            from casting.visualize import to_png_bytes

            png = to_png_bytes(predictor.overlay(images[0], raws[0]))
            resp = Response(png, mimetype="image/png")
            resp.headers["X-Detections"] = str(len(raws[0].class_ids))
        else:
            results = [
                {"width": r.width, "height": r.height,
                 "detections": predictor.format(r, mask_format)}
                for r in raws
            ]
            payload: dict[str, Any] = {"predictions": results} if batched else results[0]
            resp = Response(json.dumps(payload, separators=(",", ":")), mimetype="application/json")
        resp.headers["X-Inference-Ms"] = f"{elapsed_ms:.1f}"
        return resp

    return app


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


# ---- gunicorn ----------------------------------------------------------------------------------
HOLDER_KEY = "CASTING_MODEL_HOLDER"


def _post_worker_init(worker: Any) -> None:
    """gunicorn hook, in each worker before it accepts connections: load the model.

    A heartbeat thread keeps telling the arbiter the worker is alive while TensorFlow loads
    (the arbiter kills workers silent for longer than the timeout). If the model cannot be
    loaded the exception propagates: gunicorn exits the worker with its boot-error code and
    the arbiter stops the whole server, instead of restarting the worker forever.
    """
    holder: ModelHolder = worker.wsgi.config[HOLDER_KEY]
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(1.0):
            try:
                worker.notify()
            except (OSError, ValueError):
                return

    beat = threading.Thread(target=heartbeat, name="load-heartbeat", daemon=True)
    beat.start()
    try:
        holder.load()
    except BaseException as exc:
        log.error("model failed to load: %s\n%s", exc, traceback.format_exc())
        raise
    finally:
        done.set()
        beat.join(5)
    if not worker.alive:  # SIGTERM arrived while loading
        sys.exit(0)


def _make_worker_app(model_dir: str, workers: int, timeout: float) -> Flask:
    holder = ModelHolder(lambda: Predictor(model_dir))
    app = create_app(holder, workers=workers, request_timeout=timeout)
    app.config[HOLDER_KEY] = holder
    return app


def build_options(
    host: str, port: int, workers: int, timeout: int, threads: int
) -> dict[str, Any]:
    return {
        "bind": f"{host}:{port}" if ":" not in host else f"[{host}]:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": timeout,
        # SageMaker sends SIGKILL 30 s after SIGTERM: finish in-flight requests well before.
        "graceful_timeout": min(20, timeout),
        "keepalive": 5,
        "preload_app": False,  # TensorFlow must not be imported before fork
        "errorlog": "-",
        "accesslog": os.environ.get("CASTING_ACCESS_LOG") or None,
        "loglevel": os.environ.get("CASTING_LOG_LEVEL", "info"),
        "proc_name": "casting-serve",
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        "limit_request_line": 8190,
        "post_worker_init": _post_worker_init,
        # gunicorn >= 26 opens a control socket in $HOME by default; a container needs none,
        # and two servers on one host would fight over the path.
        "control_socket_disable": True,
    }


def run_server(
    model_dir: str,
    host: str = "0.0.0.0",
    port: int | None = None,
    workers: int | None = None,
    timeout: int | None = None,
    threads: int | None = None,
) -> None:
    """Serve ``model_dir`` with gunicorn until SIGTERM/SIGINT (then exit 0)."""
    from gunicorn.app.base import BaseApplication

    port = port if port is not None else _env_int("SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT, 0)
    workers = workers or _env_int("SAGEMAKER_MODEL_SERVER_WORKERS", 1)
    timeout = timeout or _env_int("SAGEMAKER_MODEL_SERVER_TIMEOUT", 60)
    threads = threads or _env_int("CASTING_SERVER_THREADS", DEFAULT_THREADS)
    model_dir = resolve_model_dir(model_dir)
    options = {k: v for k, v in build_options(host, port, workers, timeout, threads).items()
               if v is not None}

    class _Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:  # runs in each worker after fork
            logging.basicConfig(level=logging.INFO,
                                format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
            return _make_worker_app(model_dir, workers, timeout)

    print(
        f"casting serve: model {model_dir} on {options['bind']} "
        f"({workers} worker(s) x {threads} threads, timeout {timeout} s)",
        file=sys.stderr,
        flush=True,
    )
    _Server().run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="serve.py",
        description="Serve a trained casting Mask R-CNN model (SageMaker hosting contract).",
    )
    parser.add_argument(
        "--model-dir",
        default=os.environ.get("SM_MODEL_DIR") or DEFAULT_MODEL_DIR,
        help="model folder written by train.py (default $SM_MODEL_DIR or /opt/ml/model)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default $SAGEMAKER_BIND_TO_PORT or 8080)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default $SAGEMAKER_MODEL_SERVER_WORKERS or 1)")
    parser.add_argument("--timeout", type=int, default=None,
                        help="seconds (default $SAGEMAKER_MODEL_SERVER_TIMEOUT or 60)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per worker (default $CASTING_SERVER_THREADS or 32)")
    parser.add_argument("mode", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("workers", "timeout", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1")
    try:
        run_server(args.model_dir, host=args.host, port=args.port, workers=args.workers,
                   timeout=args.timeout, threads=args.threads)
    except FileNotFoundError as exc:
        print(f"serve.py: {exc}", file=sys.stderr)
        return 2
    return 0
