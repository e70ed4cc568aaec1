"""Spot-safe checkpoints: ``ckpt-<global step>/`` folders written under a temporary name and
renamed, holding ``model.weights.h5``, ``optimizer.npz`` and ``state.json`` (epoch, step in
epoch, global step, stage, random states, config, history, checksums). The newest K are
kept; at start the newest *valid* one wins. Weights that are not finite are never written."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from casting.errors import Explained
from casting.files import (free_space_text, fsync_dir, fsync_file, replace_dir, reserve_space_for,
                           sha256_file)
from casting.finite import check_finite
from casting.training.rng import restore_rng_state

log = logging.getLogger("casting.training")

CHECKPOINT_PREFIX = "ckpt-"
TMP_PREFIX = ".tmp-"
STATE_FILE = "state.json"
WEIGHTS_FILE = "model.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
STATE_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint folder is incomplete or corrupt."""


class CheckpointWriteError(Explained, OSError):
    """A checkpoint could not be written (disk full, folder unwritable or not a folder);
    the previous checkpoints are untouched."""


def _write_error(directory: str, exc: BaseException) -> CheckpointWriteError:
    return CheckpointWriteError(
        f"cannot write a checkpoint in {directory}: {type(exc).__name__}: {exc} "
        f"({free_space_text(directory)}). The earlier checkpoints there are untouched. Free "
        "space or give a writable folder (--checkpoint-dir; on SageMaker the estimator's "
        "checkpoint_local_path), then restart: training resumes from the newest checkpoint.")


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


def _loss_scale_count(optimizer: Any) -> int:
    """How many of ``optimizer.variables`` (the first ones) are a LossScaleOptimizer's own
    (its step counter and loss scale); 0 for an optimizer without loss scaling."""
    if getattr(optimizer, "inner_optimizer", None) is None:
        return 0
    return len(optimizer.variables) - len(optimizer.inner_optimizer.variables)


def save_optimizer_variables(optimizer: Any, path: str) -> None:
    arrays = {}
    names = []
    for i, variable in enumerate(optimizer.variables):
        arrays[f"v{i}"] = np.asarray(variable.numpy())
        names.append(getattr(variable, "path", None) or variable.name)
    arrays["__names__"] = np.asarray(names, dtype=np.str_)
    arrays["__loss_scale_count__"] = np.asarray(_loss_scale_count(optimizer))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_optimizer_variables(optimizer: Any, path: str) -> None:
    """Assign every optimizer variable exactly; any mismatch is an error (Keras' own
    ``load_own_variables`` only warns and skips). A run resumed in another precision
    (float16's loss scaling on or off) keeps the SGD state and starts a fresh loss scale."""
    with np.load(path, allow_pickle=False) as data:
        names = list(data["__names__"])
        saved_own = int(data["__loss_scale_count__"]) if "__loss_scale_count__" in data else 0
        values = [data[f"v{i}"] for i in range(len(names))]
    variables = list(optimizer.variables)
    own = _loss_scale_count(optimizer)
    if saved_own != own:
        log.warning("%s: saved %s loss scaling, resumed %s: the SGD state is restored, the "
                    "loss scale starts afresh", path, "with" if saved_own else "without",
                    "with" if own else "without")
        names, values, variables = names[saved_own:], values[saved_own:], variables[own:]
    if len(names) != len(variables):
        raise CheckpointError(
            f"optimizer state has {len(names)} variables, the optimizer has "
            f"{len(variables)} (different model or layers?)")
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
        self._ensure_directory()

    def _ensure_directory(self) -> None:
        if os.path.isdir(self.directory):
            return
        if os.path.exists(self.directory):
            raise CheckpointWriteError(
                f"the checkpoint folder {self.directory} is a file, not a folder: remove it "
                "or give another folder (--checkpoint-dir)")
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as exc:
            raise _write_error(self.directory, exc) from None

    def check_writable(self) -> None:
        """Create and remove a file in the folder; raise :class:`CheckpointWriteError` (what,
        where, free space, what to do) if that fails, before any training is spent."""
        self._ensure_directory()
        probe = os.path.join(self.directory, f"{TMP_PREFIX}probe-{os.getpid()}")
        try:
            with open(probe, "wb") as fh:
                fh.write(b"0" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
            os.remove(probe)
        except OSError as exc:
            raise _write_error(self.directory, exc) from None

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
                if sha256_file(file_path) != meta["sha256"]:
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
        """Write ``ckpt-<global step>`` atomically and prune to the newest ``keep``.

        Refuses (:class:`NonFiniteError`, nothing written) when a weight or an optimizer
        variable is not finite. A folder that vanished is made again, with a warning; any
        failure to write raises :class:`CheckpointWriteError` and leaves the earlier
        checkpoints as they were."""
        name = f"{CHECKPOINT_PREFIX}{state.global_step:010d}"
        variables = list(model.weights) + list(optimizer.variables)
        check_finite(variables, f"checkpoint {name}")
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f"{TMP_PREFIX}{name}-{os.getpid()}-{time.time_ns()}")
        if not os.path.isdir(self.directory):
            log.warning("the checkpoint folder %s vanished; making it again", self.directory)
            self._ensure_directory()
        try:
            os.makedirs(tmp)
        except OSError as exc:
            raise _write_error(self.directory, exc) from None
        started = time.time()
        try:
            reserve_space_for(tmp, variables)  # a full disk fails here, cleanly
            model.save_weights(os.path.join(tmp, WEIGHTS_FILE))
            save_optimizer_variables(optimizer, os.path.join(tmp, OPTIMIZER_FILE))
            files = {}
            for fname in (WEIGHTS_FILE, OPTIMIZER_FILE):
                fpath = os.path.join(tmp, fname)
                fsync_file(fpath)
                files[fname] = {"size": os.path.getsize(fpath), "sha256": sha256_file(fpath)}
            data = state.to_dict()
            data["files"] = files
            data["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(tmp)
            # the same global step may have been saved before (e.g. a stop, then epoch end)
            replace_dir(tmp, final)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _write_error(self.directory, exc) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("saved checkpoint %s in %.1fs", final, time.time() - started)
        self._prune()
        return final

    def set_aside(self) -> str | None:
        """Move every checkpoint into ``superseded-<UTC time>/`` in the same folder (a run
        that starts over must not have its new, lower-numbered checkpoints pruned in favour
        of an old run's). Returns that folder, or None when there was nothing to move."""
        found = self.checkpoints()
        if not found:
            return None
        target = os.path.join(self.directory,
                              "superseded-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        os.makedirs(target, exist_ok=True)
        for path in found:
            os.rename(path, os.path.join(target, os.path.basename(path)))
        fsync_dir(self.directory)
        return target

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
