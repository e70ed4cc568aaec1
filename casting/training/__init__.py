"""Training machinery: strategy, optimizer and schedule, spot-safe checkpoints, the epoch loop.

Everything here is model-agnostic (any ``keras.Model`` with an optimizer), so it is tested
with a small model; ``train.py`` wires it to Mask R-CNN. One module per concept:

* ``casting.schedule`` - :class:`Plan` / :class:`Stage` / :class:`WarmupStagedLR`, the staged
  schedule and its learning rate; ``casting.distribute`` - :func:`select_strategy`.
* :mod:`casting.training.optim` - :func:`make_optimizer` (SGD with momentum, optional
  decoupled weight decay, global-norm clipping) and which layers it trains.
* :mod:`casting.training.checkpoints` - :class:`CheckpointManager`, :class:`TrainState`.
* :mod:`casting.finite` - the non-finite loss stop and the finite-weights check
  that guards every checkpoint and model written.
* :mod:`casting.training.provenance` - what a checkpoint was trained on (data, classes,
  architecture): another run's checkpoint is refused, not resumed.
* :mod:`casting.training.rng` - the random states a checkpoint records.
* :mod:`casting.training.signals` - :class:`TerminationFlag` (SIGTERM).
* :mod:`casting.training.history` - ``history.csv`` and TensorBoard scalars.
* :mod:`casting.training.loop` - :class:`TrainingLoop`, the epoch loop.

The names below stay importable from ``casting.training``.
"""

from casting.distribute import select_strategy
from casting.schedule import Plan, Stage, WarmupStagedLR, total_steps_text
from casting.training.checkpoints import (CheckpointError, CheckpointManager,
                                          CheckpointWriteError, TrainState)
from casting.finite import NonFiniteError, check_finite, nonfinite_logs
from casting.training.history import ScalarSummaries, write_history_csv
from casting.training.loop import (LoopCallback, StepLogger, TrainingLoop, repeat_if_finite,
                                   seed_everything)
from casting.training.optim import build_optimizer_for_all_layers, make_optimizer, set_layers
from casting.training.provenance import (ARCHITECTURE_FIELDS, ResumeError, check_resumable,
                                         provenance)
from casting.training.rng import capture_rng_state, restore_rng_state
from casting.training.signals import TerminationFlag

__all__ = [
    "select_strategy", "Stage", "Plan", "WarmupStagedLR", "make_optimizer", "set_layers",
    "build_optimizer_for_all_layers", "capture_rng_state", "restore_rng_state",
    "CheckpointError", "CheckpointWriteError", "TrainState", "CheckpointManager",
    "TerminationFlag", "NonFiniteError", "check_finite", "nonfinite_logs",
    "write_history_csv", "ScalarSummaries", "TrainingLoop", "LoopCallback", "StepLogger",
    "seed_everything", "repeat_if_finite", "total_steps_text", "ARCHITECTURE_FIELDS",
    "ResumeError", "check_resumable", "provenance",
]
