"""The epoch loop over a Plan: one fit per stage, resumable from any (epoch, step), with a
checkpoint every N steps and at epoch ends, a stop at the next step after SIGTERM, and a
loud stop at the first non-finite loss."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from casting.schedule import Plan
from casting.training.checkpoints import CheckpointManager, TrainState
from casting.finite import NonFiniteError, nonfinite_logs, nonfinite_message
from casting.training.history import _keras_callbacks_base, write_history_csv
from casting.training.optim import set_layers
from casting.training.rng import capture_rng_state
from casting.training.signals import TerminationFlag

log = logging.getLogger("casting.training")


class _StopNow(Exception):
    """Raised by the loop's callback after the stop checkpoint: leaves ``fit`` at once, so
    the interrupted epoch runs no validation batch (SageMaker's grace is 120 s)."""


def format_logs(logs: dict[str, Any] | None) -> str:
    """``name=value`` pairs: unlike Keras' ``- name: value`` epoch lines, which SageMaker's
    metric regexes read (casting.metrics), step lines do not feed the epoch metrics."""
    parts = []
    for key, value in (logs or {}).items():
        try:
            parts.append(f"{key}={float(value):.4f}")
        except (TypeError, ValueError):
            continue
    return " ".join(parts)


class LoopCallback(_keras_callbacks_base()):
    """Counts steps, stops at a non-finite loss, writes step/epoch checkpoints, records
    history, honours SIGTERM."""

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
        bad = nonfinite_logs(logs)
        if bad:  # before any checkpoint: these weights must not reach the disk
            raise NonFiniteError(nonfinite_message(bad, logs, state.epoch, self.step,
                                                   state.global_step, loop.last_checkpoint()))
        if loop.stop_requested():
            loop.save_checkpoint(reason="stop signal")
            self.interrupted = True
            self.model.stop_training = True
            print(f"Epoch {state.epoch + 1}/{loop.plan.total_epochs} stopped at step "
                  f"{self.step}/{loop.plan.steps_per_epoch}: {format_logs(logs)}", flush=True)
            return  # _LeaveFit, the last callback, leaves fit after the others saw the step
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


class _LeaveFit(_keras_callbacks_base()):
    """The last callback: after a stop checkpoint, leaves ``fit`` before its validation."""

    def __init__(self, loop_callback: LoopCallback):
        super().__init__()
        self.loop_callback = loop_callback

    def on_train_batch_end(self, batch, logs=None):
        if self.loop_callback.interrupted:
            raise _StopNow()


class StepLogger(_keras_callbacks_base()):
    """A line every ``every`` steps: global step, epoch, seconds per step, running losses
    (progress inside long epochs where stdout is a log, not a terminal)."""

    def __init__(self, loop: "TrainingLoop", every: int):
        super().__init__()
        self.loop = loop
        self.every = int(every)
        self._last = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._last is None:
            self._last = (time.perf_counter(), self.loop.state.global_step)

    def on_train_batch_end(self, batch, logs=None):
        state, plan = self.loop.state, self.loop.plan
        if self.every <= 0 or state.global_step % self.every:
            return
        now = time.perf_counter()
        then, step0 = self._last
        rate = (now - then) / max(1, state.global_step - step0)
        self._last = (now, state.global_step)
        print(f"step {state.global_step}/{plan.total_epochs * plan.steps_per_epoch} (epoch "
              f"{state.epoch + 1}/{plan.total_epochs}, {state.step_in_epoch}/"
              f"{plan.steps_per_epoch}) {rate:.2f}s/step {format_logs(logs)}", flush=True)


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
    # A line every N steps (StepLogger); 0: none.
    log_every_steps: int = 0
    interrupted: bool = False
    _last_saved_step: int = -1
    _last_saved_path: str | None = None

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
            log.warning("the optimizer has taken %d steps but the loop counts %d: the learning "
                        "rate follows the optimizer's count; was the optimizer state loaded "
                        "from another run?", iterations, self.state.global_step)
        path = self.manager.save(self.model, self.optimizer, self.state)
        self._last_saved_step = self.state.global_step
        self._last_saved_path = path
        if reason:
            print(f"Checkpoint ({reason}): {path}: {self.state.epoch} epochs + "
                  f"{self.state.step_in_epoch} steps done, global step "
                  f"{self.state.global_step}", flush=True)
        return path

    def last_checkpoint(self) -> str | None:
        """The newest checkpoint written by this run, else the newest valid one on disk."""
        if self._last_saved_path or self.manager is None:
            return self._last_saved_path
        found = self.manager.latest_valid()
        return found[0] if found else None

    def run(self, train_data: Any, validation_data: Any = None) -> TrainState:
        """Train until ``plan.total_epochs`` or a stop signal; returns the state.

        ``train_data`` is a dataset, or a function of the global step that returns the
        dataset from that step on (each ``fit`` calls it, so a resumed run and every stage
        read the same stream as one uninterrupted run). A non-finite loss raises
        :class:`NonFiniteError` at that step."""
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
            if self.log_every_steps > 0:
                callbacks.append(StepLogger(self, self.log_every_steps))
            callbacks.append(_LeaveFit(callback))
            data = train_data(state.global_step) if callable(train_data) else train_data
            left_early = False
            try:
                self.model.fit(
                    data,
                    initial_epoch=state.epoch,
                    epochs=end_epoch,
                    steps_per_epoch=steps,
                    validation_data=validation_data,
                    validation_steps=(self.validation_steps if validation_data is not None
                                      else None),
                    callbacks=callbacks,
                    shuffle=False,
                    verbose=self.verbose,
                )
            except _StopNow:
                left_early = True
            finally:
                sys.stdout.flush()
            if left_early:
                for extra in self.extra_callbacks:  # fit's on_train_end did not run
                    extra.on_train_end()
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
