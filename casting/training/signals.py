"""The stop signal: SIGTERM sets a flag that the training loop reads after every step."""

from __future__ import annotations

import signal
import threading
from typing import Iterable


class TerminationFlag:
    """Set by SIGTERM (SageMaker stop / spot reclaim: SIGKILL follows 120 s later)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def install(self, signals: Iterable[int] = (signal.SIGTERM,)) -> "TerminationFlag":
        for signum in signals:
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        first = not self._event.is_set()
        self.signum = signum
        self._event.set()
        if first:
            # print, not log: keep the handler minimal and reentrant-safe enough.
            print(f"Received signal {signum}: checkpointing at the next step, then stopping.",
                  flush=True)

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()
