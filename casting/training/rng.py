"""The random states a checkpoint records (Python, NumPy, TensorFlow's global generator)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np


def capture_rng_state() -> dict[str, Any]:
    import tensorflow as tf

    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "tf_global_generator": tf.random.get_global_generator().state.numpy().tolist(),
    }


def restore_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    import tensorflow as tf

    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "tf_global_generator" in state:
        gen = tf.random.get_global_generator()
        gen.state.assign(np.asarray(state["tf_global_generator"], dtype=np.int64))
