"""Helpers shared by the tests: free loopback ports, and running train.py as SageMaker
would (environment, data, processes).

Imported by the test modules as `testkit` (pytest puts tests/ on sys.path).
"""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago (all held open together
    while choosing, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]

VENV_BIN = Path(sys.executable).parent

SMALL = {
    "fpn_channels": 32, "rpn_conv_channels": 32, "fc_layers_size": 64,
    "pre_nms_limit": 500, "post_nms_rois_training": 64, "post_nms_rois_inference": 64,
    "train_rois_per_image": 32, "detection_max_instances": 10, "max_gt_instances": 10,
    "detection_min_confidence": 0.0, "validation_steps": 1, "warmup_steps": 2,
}


def _env(base=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    for key in list(env):
        if key.startswith("SM_"):
            del env[key]
    if base is not None:
        env["SAGEMAKER_BASE_DIR"] = str(base)
    return env


def _synthetic(out, count=6, seed=3):
    from casting.data.synthetic import write_synthetic

    return write_synthetic(str(out), count=count, seed=seed, fmt="supervisely", size=64)[0]


class Proc:
    """A subprocess whose output is collected line by line in the background."""

    def __init__(self, args, env, cwd):
        self.lines = []
        self.p = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)

    @property
    def text(self):
        return "".join(self.lines)

    def wait_for(self, predicate, timeout=300):
        end = time.time() + timeout
        while time.time() < end:
            if predicate():
                return True
            if self.p.poll() is not None:
                return predicate()
            time.sleep(0.005)
        return False

    def finish(self, timeout=400):
        try:
            rc = self.p.wait(timeout=timeout)
        finally:
            if self.p.poll() is None:
                self.p.kill()
        self._t.join(10)
        return rc


def h5_weights_finite(path) -> bool:
    """Whether a Keras ``.weights.h5`` file holds arrays and every float in them is finite."""
    import h5py
    import numpy as np

    arrays = []
    with h5py.File(path, "r") as fh:
        fh.visititems(lambda name, obj: arrays.append(obj[()])
                      if isinstance(obj, h5py.Dataset) else None)
    return bool(arrays) and all(np.all(np.isfinite(a)) for a in arrays
                                if np.asarray(a).dtype.kind == "f")
