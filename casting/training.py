"""Training machinery: strategy, optimizer and schedule, spot-safe checkpoints, the epoch loop.

Everything here is model-agnostic (any ``keras.Model`` with an optimizer), so it is tested
with a small model; ``train.py`` wires it to Mask R-CNN.

* :func:`select_strategy` - one place that picks the ``tf.distribute`` strategy (it lives in
  :mod:`casting.distribute`, with the other multi-worker helpers).
* :class:`Plan` / :class:`Stage` / :class:`WarmupStagedLR` - the staged schedule and its
  learning rate (they live in :mod:`casting.schedule`, re-exported here).
* :func:`make_optimizer` - SGD with momentum, decoupled weight decay (not on biases or
  normalisation parameters) and global-norm gradient clipping.
* :class:`CheckpointManager` - ``ckpt-<global step>/`` folders written under a temporary
  name and renamed, holding ``model.weights.h5``, ``optimizer.npz`` and ``state.json``
  (epoch, step in epoch, global step, stage, random states, config, history, checksums);
  keeps the newest K; at start the newest *valid* one wins, others are skipped with a
  warning that names them.
* :class:`TerminationFlag` - SIGTERM sets a flag; the loop's callback checkpoints at the
  next batch end and stops training.
* :func:`run_training` - the epoch loop: one ``fit`` per stage (plus a short one to finish
  an epoch interrupted mid-way), verbose=2 epoch lines, CSV history, TensorBoard.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from casting.distribute import select_strategy  # noqa: F401 - re-exported here
from casting.schedule import (  # noqa: F401 - re-exported here
    Plan, Stage, WarmupStagedLR, total_steps_text,
)

log = logging.getLogger("casting.training")

CHECKPOINT_PREFIX = "ckpt-"
TMP_PREFIX = ".tmp-"
STATE_FILE = "state.json"
WEIGHTS_FILE = "model.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
STATE_VERSION = 1


def _keras_callbacks_base():
    import keras

    return keras.callbacks.Callback


def make_optimizer(config: Any, plan: Plan, decoupled_weight_decay: bool = True):
    """SGD + momentum, global-norm clipping, and the plan's warm-up/stage learning rate.

    With ``decoupled_weight_decay`` the optimizer applies ``config.weight_decay`` (not to
    biases or normalisation parameters). Pass False for a model that already adds an L2
    term to its loss (``MaskRCNN.weight_decay_loss``), so the decay is not applied twice."""
    import keras

    clip = float(config.gradient_clip_norm or 0.0)
    decay = float(config.weight_decay or 0.0) if decoupled_weight_decay else 0.0
    optimizer = keras.optimizers.SGD(
        learning_rate=plan.lr_schedule(),
        momentum=float(config.momentum),
        weight_decay=decay or None,
        global_clipnorm=clip if clip > 0 else None,
    )
    if decay:
        optimizer.exclude_from_weight_decay(
            var_names=["bias", "gamma", "beta", "moving_mean", "moving_variance"])
    return optimizer


def set_layers(model: Any, layers: str) -> None:
    """``model.set_trainable_layers(layers)`` and drop the traced train function so the
    next ``fit`` sees the new trainable variables."""
    setter = getattr(model, "set_trainable_layers", None)
    if setter is None:
        if layers != "all":
            raise ValueError(f"this model cannot train only {layers!r}")
    else:
        setter(layers)
    # The train function captured the trainable variables when it was traced.
    model.train_function = None


def build_optimizer_for_all_layers(model: Any, optimizer: Any, first_layers: str) -> None:
    """Build the optimizer's slots for every variable any stage may train, so one
    optimizer (and one checkpoint layout) serves every stage; then select ``first_layers``."""
    set_layers(model, "all")
    variables = list(model.trainable_variables)
    if not variables:
        raise RuntimeError("the model has no trainable variables (is it built?)")
    if not optimizer.built:
        optimizer.build(variables)
    set_layers(model, first_layers)


# ---------------------------------------------------------------------------------------
# random state
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------
class CheckpointError(RuntimeError):
    """A checkpoint folder is incomplete or corrupt."""


@dataclass
class TrainState:
    """Where training stands: what a checkpoint records besides the weights."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # completed steps of epoch `epoch` (0-based epoch index)
    global_step: int = 0
    stage: int = 0
    seed: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step, "stage": self.stage, "seed": self.seed,
            "history": self.history, "config": self.config, "rng": self.rng,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        return cls(
            epoch=int(data["epoch"]), step_in_epoch=int(data["step_in_epoch"]),
            global_step=int(data["global_step"]), stage=int(data.get("stage", 0)),
            seed=int(data.get("seed", 0)), history=list(data.get("history", [])),
            config=dict(data.get("config", {})), rng=dict(data.get("rng", {})),
            extra=dict(data.get("extra", {})),
        )


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_optimizer_variables(optimizer: Any, path: str) -> None:
    arrays = {}
    names = []
    for i, variable in enumerate(optimizer.variables):
        arrays[f"v{i}"] = np.asarray(variable.numpy())
        names.append(getattr(variable, "path", None) or variable.name)
    arrays["__names__"] = np.asarray(names, dtype=np.str_)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_optimizer_variables(optimizer: Any, path: str) -> None:
    """Assign every optimizer variable exactly; any mismatch is an error (Keras' own
    ``load_own_variables`` only warns and skips)."""
    with np.load(path, allow_pickle=False) as data:
        names = list(data["__names__"])
        variables = list(optimizer.variables)
        if len(names) != len(variables):
            raise CheckpointError(
                f"optimizer state has {len(names)} variables, the optimizer has "
                f"{len(variables)} (different model or layers?)")
        values = [data[f"v{i}"] for i in range(len(variables))]
    for variable, value, name in zip(variables, values, names):
        if tuple(variable.shape) != tuple(value.shape):
            raise CheckpointError(
                f"optimizer variable {name}: saved shape {value.shape}, now {tuple(variable.shape)}")
    for variable, value in zip(variables, values):
        variable.assign(value)


class CheckpointManager:
    """Atomic, self-checking checkpoint folders ``<dir>/ckpt-<global step>``."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        self.directory = os.fspath(directory)
        self.keep = max(1, int(keep))
        os.makedirs(self.directory, exist_ok=True)

    # ---- listing -----------------------------------------------------------------------
    def _entries(self) -> list[tuple[int, str]]:
        out = []
        for name in os.listdir(self.directory):
            if not name.startswith(CHECKPOINT_PREFIX):
                continue
            try:
                step = int(name[len(CHECKPOINT_PREFIX):])
            except ValueError:
                continue
            out.append((step, os.path.join(self.directory, name)))
        return sorted(out, reverse=True)

    def checkpoints(self) -> list[str]:
        """Checkpoint folders, newest first (not checked)."""
        return [path for _, path in self._entries()]

    def partial_writes(self) -> list[str]:
        return sorted(os.path.join(self.directory, n) for n in os.listdir(self.directory)
                      if n.startswith(TMP_PREFIX))

    # ---- validation --------------------------------------------------------------------
    @staticmethod
    def read_state(path: str, verify: bool = True) -> TrainState:
        """The checkpoint's state; raises CheckpointError if it is incomplete or corrupt."""
        state_path = os.path.join(path, STATE_FILE)
        if not os.path.isdir(path):
            raise CheckpointError("not a folder")
        if not os.path.isfile(state_path):
            raise CheckpointError(f"no {STATE_FILE} (partial write?)")
        try:
            with open(state_path, encoding="utf-8") as fh:
                data = json.load(fh)
            state = TrainState.from_dict(data)
            files = dict(data["files"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{STATE_FILE} unreadable: {exc}") from None
        for required in (WEIGHTS_FILE, OPTIMIZER_FILE):
            if required not in files:
                raise CheckpointError(f"{STATE_FILE} does not list {required}")
        if verify:
            for name, meta in files.items():
                file_path = os.path.join(path, name)
                if not os.path.isfile(file_path):
                    raise CheckpointError(f"{name} missing")
                size = os.path.getsize(file_path)
                if size != int(meta["size"]):
                    raise CheckpointError(f"{name} has {size} bytes, expected {meta['size']}")
                if _sha256(file_path) != meta["sha256"]:
                    raise CheckpointError(f"{name} checksum mismatch")
        return state

    def latest_valid(self) -> tuple[str, TrainState] | None:
        """The newest checkpoint that passes the checks; the others newer than it, and
        partial (temporary) writes, are reported with a warning naming them."""
        for partial in self.partial_writes():
            log.warning("skipping partial checkpoint write %s (interrupted while saving)",
                        partial)
        for path in self.checkpoints():
            try:
                return path, self.read_state(path)
            except CheckpointError as exc:
                log.warning("skipping corrupt checkpoint %s: %s", path, exc)
        return None

    # ---- writing -----------------------------------------------------------------------
    def save(self, model: Any, optimizer: Any, state: TrainState) -> str:
        """Write ``ckpt-<global step>`` atomically and prune to the newest ``keep``."""
        name = f"{CHECKPOINT_PREFIX}{state.global_step:010d}"
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f"{TMP_PREFIX}{name}-{os.getpid()}-{time.time_ns()}")
        os.makedirs(tmp)
        started = time.time()
        try:
            model.save_weights(os.path.join(tmp, WEIGHTS_FILE))
            save_optimizer_variables(optimizer, os.path.join(tmp, OPTIMIZER_FILE))
            files = {}
            for fname in (WEIGHTS_FILE, OPTIMIZER_FILE):
                fpath = os.path.join(tmp, fname)
                _fsync_file(fpath)
                files[fname] = {"size": os.path.getsize(fpath), "sha256": _sha256(fpath)}
            data = state.to_dict()
            data["files"] = files
            data["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(tmp)
            if os.path.exists(final):  # same global step saved before (e.g. stop, then epoch end)
                old = os.path.join(self.directory, f"{TMP_PREFIX}old-{name}-{time.time_ns()}")
                os.rename(final, old)
                os.rename(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, final)
            _fsync_dir(self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("saved checkpoint %s in %.1fs", final, time.time() - started)
        self._prune()
        return final

    def _prune(self) -> None:
        for path in self.checkpoints()[self.keep:]:
            shutil.rmtree(path, ignore_errors=True)

    def cleanup_partial(self) -> None:
        for path in self.partial_writes():
            shutil.rmtree(path, ignore_errors=True)

    # ---- reading -----------------------------------------------------------------------
    def restore(self, path: str, model: Any, optimizer: Any) -> TrainState:
        state = self.read_state(path, verify=False)
        model.load_weights(os.path.join(path, WEIGHTS_FILE))
        load_optimizer_variables(optimizer, os.path.join(path, OPTIMIZER_FILE))
        restore_rng_state(state.rng)
        return state


# ---------------------------------------------------------------------------------------
# SIGTERM
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# history
# ---------------------------------------------------------------------------------------
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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(buf.getvalue())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# TensorBoard (without the tensorboard package)
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------
class LoopCallback(_keras_callbacks_base()):
    """Counts steps, writes step/epoch checkpoints, records history, honours SIGTERM."""

    def __init__(self, loop: "TrainingLoop", first_epoch_offset: int = 0):
        super().__init__()
        self.loop = loop
        self.offset = first_epoch_offset
        self.step = 0
        self.interrupted = False
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        self.step = self.offset if self._first else 0
        self._first = False
        self.loop.state.epoch = epoch
        self.loop.state.step_in_epoch = self.step

    def on_train_batch_end(self, batch, logs=None):
        loop = self.loop
        self.step += 1
        state = loop.state
        state.step_in_epoch = self.step
        state.global_step = state.epoch * loop.plan.steps_per_epoch + self.step
        if loop.stop_requested():
            loop.save_checkpoint(reason="stop signal")
            self.interrupted = True
            self.model.stop_training = True
            return
        every = loop.checkpoint_every_steps
        if every and state.global_step % every == 0 and self.step < loop.plan.steps_per_epoch:
            loop.save_checkpoint(reason=f"every {every} steps")

    def on_test_begin(self, logs=None):
        if self.interrupted:
            self.model.stop_evaluating = True

    def on_test_batch_end(self, batch, logs=None):
        if self.interrupted or self.loop.stop_requested():
            self.model.stop_evaluating = True

    def on_epoch_end(self, epoch, logs=None):
        if self.interrupted:
            return
        loop = self.loop
        state = loop.state
        row = {"epoch": epoch + 1, "stage": loop.plan.stage_for_epoch(epoch).index + 1,
               "lr": loop.plan.lr_schedule().value_at(state.global_step)}
        for key, value in (logs or {}).items():
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                continue
        state.history.append(row)
        state.epoch = epoch + 1
        state.step_in_epoch = 0
        state.global_step = state.epoch * loop.plan.steps_per_epoch
        state.stage = loop.plan.stage_for_epoch(state.epoch).index
        if loop.history_csv:
            write_history_csv(state.history, loop.history_csv)
        loop.save_checkpoint(reason="epoch end")
        if loop.on_epoch_end is not None:
            loop.on_epoch_end(state)
        if loop.stop_requested():
            self.interrupted = True
            self.model.stop_training = True


@dataclass
class TrainingLoop:
    """The epoch loop over a :class:`Plan`, resumable from any (epoch, step)."""

    model: Any
    plan: Plan
    state: TrainState
    manager: CheckpointManager | None = None
    terminate: TerminationFlag | None = None
    checkpoint_every_steps: int = 0
    history_csv: str | None = None
    validation_steps: int | None = None
    extra_callbacks: list[Any] = field(default_factory=list)
    on_epoch_end: Callable[[TrainState], None] | None = None
    verbose: int = 2
    # Several workers: an all-reduce of the local stop flag (casting.distribute.any_worker),
    # so that a signal seen by one worker stops every worker after the same step.
    agree: Callable[[bool], bool] | None = None
    interrupted: bool = False
    _last_saved_step: int = -1

    @property
    def optimizer(self):
        return self.model.optimizer

    def stop_requested(self) -> bool:
        """Whether to stop now; with ``agree``, the same answer on every worker (every
        worker must ask at the same points)."""
        flag = self.terminate is not None and self.terminate.is_set()
        return self.agree(flag) if self.agree is not None else flag

    def save_checkpoint(self, reason: str = "") -> str | None:
        if self.manager is None:
            return None
        self.state.rng = capture_rng_state()
        iterations = int(self.optimizer.iterations.numpy())
        if iterations != self.state.global_step:
            log.warning("optimizer step %d != loop step %d", iterations, self.state.global_step)
        path = self.manager.save(self.model, self.optimizer, self.state)
        self._last_saved_step = self.state.global_step
        if reason:
            print(f"Checkpoint ({reason}): {path}: {self.state.epoch} epochs + "
                  f"{self.state.step_in_epoch} steps done, global step "
                  f"{self.state.global_step}", flush=True)
        return path

    def run(self, train_data: Any, validation_data: Any = None) -> TrainState:
        """Train until ``plan.total_epochs`` or a stop signal; returns the state."""
        import keras

        plan, state = self.plan, self.state
        current_layers = None
        while state.epoch < plan.total_epochs:
            if self.stop_requested():
                if state.global_step != self._last_saved_step and state.global_step > 0:
                    self.save_checkpoint(reason="stop signal")
                self.interrupted = True
                return state
            stage = plan.stage_for_epoch(state.epoch)
            state.stage = stage.index
            if stage.layers != current_layers:
                set_layers(self.model, stage.layers)
                current_layers = stage.layers
            if state.step_in_epoch >= plan.steps_per_epoch:  # defensive: epoch was done
                state.epoch, state.step_in_epoch = state.epoch + 1, 0
                continue
            if state.step_in_epoch > 0:  # finish an interrupted epoch, then the stage
                end_epoch = state.epoch + 1
                steps = plan.steps_per_epoch - state.step_in_epoch
                print(f"Resuming epoch {state.epoch + 1} at step {state.step_in_epoch + 1}"
                      f" ({steps} steps left)", flush=True)
            else:
                end_epoch = stage.end_epoch
                steps = plan.steps_per_epoch
            print(f"Stage {stage.index + 1}/{len(plan.stages)}: layers={stage.layers} "
                  f"lr={stage.lr:g}, epochs {state.epoch + 1}-{end_epoch} of "
                  f"{plan.total_epochs}", flush=True)
            callback = LoopCallback(self, first_epoch_offset=state.step_in_epoch)
            callbacks = [keras.callbacks.ProgbarLogger(), keras.callbacks.History(),
                         callback, *self.extra_callbacks]
            self.model.fit(
                train_data,
                initial_epoch=state.epoch,
                epochs=end_epoch,
                steps_per_epoch=steps,
                validation_data=validation_data,
                validation_steps=self.validation_steps if validation_data is not None else None,
                callbacks=callbacks,
                shuffle=False,
                verbose=self.verbose,
            )
            if callback.interrupted:
                self.interrupted = True
                return state
        return state


def seed_everything(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(int(seed))


def repeat_if_finite(dataset: Any) -> Any:
    """``fit(steps_per_epoch=...)`` needs an endless dataset; repeat finite ones."""
    import tensorflow as tf

    try:
        card = int(dataset.cardinality())
    except Exception:  # not a tf.data.Dataset
        return dataset
    if card == tf.data.INFINITE_CARDINALITY:
        return dataset
    if card == 0:
        raise ValueError("the dataset is empty")
    return dataset.repeat()


__all__ = [
    "select_strategy", "Stage", "Plan", "WarmupStagedLR", "make_optimizer", "set_layers",
    "build_optimizer_for_all_layers", "capture_rng_state", "restore_rng_state",
    "CheckpointError", "TrainState", "CheckpointManager", "TerminationFlag",
    "write_history_csv", "ScalarSummaries", "TrainingLoop", "LoopCallback", "seed_everything",
    "repeat_if_finite", "total_steps_text",
]
