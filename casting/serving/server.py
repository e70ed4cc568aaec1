"""gunicorn: one gthread worker process per model copy, each loading the model before it
accepts connections; the `serve.py` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import traceback
from typing import Any

from flask import Flask

from casting.inference import Predictor, resolve_model_dir
from casting.serving.app import create_app
from casting.serving.holder import ModelHolder
from casting.serving.parsing import _env_int

log = logging.getLogger("casting.serving")

DEFAULT_PORT = 8080
DEFAULT_MODEL_DIR = "/opt/ml/model"
# Threads per worker. Inference inside a worker runs one request at a time (a lock); the
# other threads wait cheaply. Many threads keep one free for /ping under load, so health
# checks answer fast even with dozens of requests queued.
DEFAULT_THREADS = 32
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
