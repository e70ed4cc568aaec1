"""The model of one worker: loaded once, handed out once ready."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from casting.inference import Predictor
from casting.serving.parsing import ApiError

log = logging.getLogger("casting.serving")


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
