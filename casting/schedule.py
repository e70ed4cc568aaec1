"""The training schedule: stages over a fixed number of steps per epoch, and the learning rate.

* :class:`Plan` / :class:`Stage` - the staged schedule (``[{"epochs": 2, "layers": "heads",
  "lr": 1e-3}, ...]``) over a fixed number of steps per epoch, with a warm-up of at most a
  tenth of the run.
* :class:`WarmupStagedLR` - linear warm-up, then the stage's learning rate, optionally
  decayed by a cosine over the run, as a function of the optimizer's step counter (so it is
  restored with the optimizer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from casting.config import LR_DECAYS

WARMUP_START_FACTOR = 0.001
STAGE_KEYS = {"epochs", "layers", "lr", "learning_rate"}


@dataclass(frozen=True)
class Stage:
    index: int
    start_epoch: int
    epochs: int
    layers: str
    lr: float

    @property
    def end_epoch(self) -> int:
        return self.start_epoch + self.epochs


@dataclass(frozen=True)
class Plan:
    stages: tuple[Stage, ...]
    steps_per_epoch: int
    warmup_steps: int = 0
    lr_decay: str = "none"

    @property
    def total_epochs(self) -> int:
        return self.stages[-1].end_epoch

    @property
    def total_steps(self) -> int:
        return self.total_epochs * self.steps_per_epoch

    def stage_for_epoch(self, epoch: int) -> Stage:
        for stage in self.stages:
            if epoch < stage.end_epoch:
                return stage
        return self.stages[-1]

    @classmethod
    def from_config(cls, config: Any, lr_scale: float = 1.0) -> "Plan":
        """Stages from ``config.schedule`` (each stage's ``epochs`` is its own length), or
        one stage of ``config.epochs`` / ``config.layers`` / ``config.learning_rate``.
        Every learning rate is multiplied by ``lr_scale`` (the number of replicas when
        ``config.scale_learning_rate``)."""
        raw = list(config.schedule) or [
            {"epochs": config.epochs, "layers": config.layers, "lr": config.learning_rate}
        ]
        stages = []
        start = 0
        for i, item in enumerate(raw):
            unknown = set(item) - STAGE_KEYS
            if unknown:
                raise ValueError(
                    f"schedule stage {i + 1} has unknown keys {sorted(unknown)}; valid: "
                    "epochs, layers, lr")
            epochs = int(item["epochs"])
            if epochs < 1:
                raise ValueError(f"schedule stage {i + 1}: epochs must be >= 1")
            lr = float(item.get("lr", item.get("learning_rate", config.learning_rate)))
            if not lr > 0:
                raise ValueError(f"schedule stage {i + 1}: lr must be > 0")
            layers = str(item.get("layers", config.layers))
            stages.append(Stage(i, start, epochs, layers, lr * float(lr_scale)))
            start += epochs
        total = start * int(config.steps_per_epoch)
        # A warm-up is a small part of a run: at most a tenth of it.
        warmup = min(int(config.warmup_steps), total // 10)
        return cls(tuple(stages), int(config.steps_per_epoch), warmup,
                   str(config.lr_decay))

    def lr_schedule(self) -> "WarmupStagedLR":
        boundaries = [s.start_epoch * self.steps_per_epoch for s in self.stages[1:]]
        return WarmupStagedLR(boundaries, [s.lr for s in self.stages], self.warmup_steps,
                              total_steps=self.total_steps, decay=self.lr_decay)

    def describe(self) -> str:
        decay = "; cosine decay to 0 over the run" if self.lr_decay == "cosine" else ""
        return "; ".join(
            f"stage {s.index + 1}: epochs {s.start_epoch + 1}-{s.end_epoch} layers={s.layers} "
            f"lr={s.lr:g}" for s in self.stages) + f"; warm-up {self.warmup_steps} steps{decay}"


def _lr_base():
    import keras

    return keras.optimizers.schedules.LearningRateSchedule


class WarmupStagedLR(_lr_base()):
    """Piecewise-constant learning rate per stage (``boundaries`` are global steps where a
    new stage starts), with a linear warm-up from ``WARMUP_START_FACTOR * lr`` over the
    first ``warmup_steps`` steps of training. ``decay="cosine"`` multiplies it by
    0.5 * (1 + cos(pi * step / total_steps)), falling to 0 at the end of the run."""

    def __init__(self, boundaries: Sequence[int], values: Sequence[float], warmup_steps: int = 0,
                 total_steps: int = 0, decay: str = "none"):
        if len(values) != len(boundaries) + 1:
            raise ValueError("need one more value than boundaries")
        if decay not in LR_DECAYS:
            raise ValueError(f"lr decay must be one of {LR_DECAYS}, not {decay!r}")
        if decay == "cosine" and total_steps < 1:
            raise ValueError("cosine decay needs the run's total steps")
        self.boundaries = [int(b) for b in boundaries]
        self.values = [float(v) for v in values]
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.decay = decay

    def __call__(self, step):
        from keras import ops

        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.values[0], "float32")
        for boundary, value in zip(self.boundaries, self.values[1:]):
            lr = ops.where(step >= boundary, ops.convert_to_tensor(value, "float32"), lr)
        if self.warmup_steps > 0:
            frac = ops.minimum(step / float(self.warmup_steps), 1.0)
            factor = WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * frac
            lr = lr * factor
        if self.decay == "cosine":
            progress = ops.minimum(step / float(self.total_steps), 1.0)
            lr = lr * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return lr

    def value_at(self, step: int) -> float:
        """The same as ``__call__`` in plain Python (for logs and tests)."""
        lr = self.values[0]
        for boundary, value in zip(self.boundaries, self.values[1:]):
            if step >= boundary:
                lr = value
        if self.warmup_steps > 0:
            frac = min(step / self.warmup_steps, 1.0)
            lr *= WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * frac
        if self.decay == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * min(step / self.total_steps, 1.0)))
        return lr

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "decay": self.decay}


def total_steps_text(plan: Plan) -> str:
    return f"{plan.total_epochs} epochs x {plan.steps_per_epoch} steps = {plan.total_steps} steps"
