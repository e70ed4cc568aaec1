"""TensorFlow's start-up noise on machines without a GPU, kept out of the logs.

Importing the CUDA build of TensorFlow on a CPU machine writes lines that look like errors:
``failed call to cuInit: INTERNAL: CUDA error ... (303)``, ``cudart_stub.cc ... Could not
find cuda drivers``, the CPU-feature and oneDNN notices, and absl's "All log messages
before absl::InitializeLog()". They come from C++ before ``TF_CPP_MIN_LOG_LEVEL`` is read,
so only the file descriptor can be filtered. :func:`import_tensorflow` imports TensorFlow
and lists its devices (which runs the CUDA probe) with stderr passing through a filter
that drops exactly those lines and forwards every other one; afterwards stderr is the
original again. On a machine with an NVIDIA device nothing is filtered: there the lines
can matter.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import threading
from typing import Any

# The start-up lines dropped on a machine without a GPU (nothing else is).
NOISE = re.compile("|".join([
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers",
    r"cuda_platform\.cc:\d+\] failed call to cuInit",
    r"cuda_(?:dnn|fft|blas)\.cc:\d+\] Unable to register cu\w+ factory",
    r"computation_placer\.cc:\d+\] computation placer already registered",
    r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    r"^To enable the following instructions: .*rebuild TensorFlow",
    r"port\.cc:\d+\] oneDNN custom operations are on",
    r"TF-TRT Warning: Could not find TensorRT",
]))


def has_nvidia_device() -> bool:
    return os.path.exists("/dev/nvidiactl") or bool(glob.glob("/dev/nvidia[0-9]*"))


class _StderrFilter:
    """While active, file descriptor 2 is a pipe; a thread forwards its lines to the
    original stderr unless they match NOISE."""

    def __init__(self) -> None:
        self.saved = -1
        self.thread: threading.Thread | None = None

    def __enter__(self) -> "_StderrFilter":
        sys.stderr.flush()
        self.saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.thread = threading.Thread(target=self._pump, args=(read_fd,), daemon=True)
        self.thread.start()
        return self

    def _pump(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                if not NOISE.search(line.decode("utf-8", "replace")):
                    os.write(self.saved, line)

    def __exit__(self, *exc: Any) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)  # closes the pipe's last write end: the pump sees EOF
        if self.thread is not None:
            self.thread.join(timeout=5)
        os.close(self.saved)


def import_tensorflow():
    """``import tensorflow`` (and its device probe) without the start-up noise on a CPU
    machine; returns the module."""
    if has_nvidia_device() or os.environ.get("CASTING_TF_STARTUP_LOGS") == "1":
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # INFO notices after start-up too
    with _StderrFilter():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf


__all__ = ["import_tensorflow", "has_nvidia_device", "NOISE"]
