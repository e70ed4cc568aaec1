"""What a run records per epoch: history.csv and TensorBoard scalars."""

from __future__ import annotations

import csv
import io
import os
from typing import TYPE_CHECKING, Any

from casting.files import write_atomic

if TYPE_CHECKING:
    from casting.training.loop import TrainingLoop


def _keras_callbacks_base():
    """keras.callbacks.Callback, imported when a callback class is defined (not before)."""
    import keras

    return keras.callbacks.Callback


def write_history_csv(history: list[dict[str, Any]], path: str) -> None:
    """The per-epoch history as CSV, written atomically (columns: union of keys)."""
    columns: list[str] = []
    for row in history:
        for key in row:
            if key not in columns:
                columns.append(key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in columns})
    write_atomic(path, buf.getvalue())


class ScalarSummaries(_keras_callbacks_base()):
    """Per-epoch scalars (losses, ``val_*`` losses, learning rate) as TensorBoard event files
    in ``<log_dir>/train`` and ``<log_dir>/validation``.

    Keras' ``TensorBoard`` callback needs the ``tensorboard`` pip package for
    ``tf.summary.scalar``; this writes the same "scalars" plugin records with core
    ``tf.summary.write``, so the image needs no extra dependency."""

    def __init__(self, log_dir: str, loop: "TrainingLoop | None" = None):
        super().__init__()
        self.log_dir = log_dir
        self.loop = loop
        self._writers: dict[str, Any] = {}

    def _writer(self, name: str):
        import tensorflow as tf

        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    def write(self, step: int, values: dict[str, float]) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        for key, value in values.items():
            run, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writer(run).as_default():
                tf.summary.write(f"epoch_{tag}", tf.constant(float(value), tf.float32),
                                 step=int(step), metadata=metadata)
        for writer in self._writers.values():
            writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        values = {}
        for key, value in (logs or {}).items():
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                continue
        if self.loop is not None:
            if self.loop.state.step_in_epoch != 0:  # stopped mid-epoch: not a finished epoch
                return
            values["learning_rate"] = self.loop.plan.lr_schedule().value_at(
                self.loop.state.global_step)
        self.write(epoch + 1, values)

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.flush()
