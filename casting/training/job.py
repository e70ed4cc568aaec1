"""The training job that `train.py` runs, step by step: folders and strategy, data and
config, the model (resumed from a checkpoint or initialised), the input streams, the
training loop, then the final evaluation and the outputs (casting.training.outputs).
`run(hp, env, terminate)` is the whole job; each step is one function below, in that order.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from casting.training.outputs import evaluate, evaluate_and_export, history_csv_path

log = logging.getLogger("train")


@dataclass
class Job:
    """What the steps of one run share."""

    hp: Any
    terminate: Any
    started: float
    strategy: Any = None
    replicas: Any = None
    model_dir: str = ""
    output_dir: str = ""
    checkpoint_dir: str = ""
    tensorboard_dir: str = ""
    spec: str = "none"
    from_scratch: bool = False
    train_records: Any = None
    val_records: Any = None
    source: str = ""
    config: Any = None
    plan: Any = None
    global_batch: int = 0
    manager: Any = None
    model: Any = None
    optimizer: Any = None
    state: Any = None
    policy: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def chief(self) -> bool:
        return self.replicas.is_chief


def run(hp, env, terminate) -> int:
    """Train, evaluate, export. Returns the exit code (0 also after a stop signal)."""
    job = Job(hp=hp, terminate=terminate, started=time.time())
    overrides = _folders_and_strategy(job, env)
    _data_and_config(job, overrides)
    _model_and_state(job)
    loop = _train(job)
    if loop.interrupted:
        print(f"Stopped by signal at epoch {job.state.epoch + 1} step "
              f"{job.state.step_in_epoch}; the checkpoint is saved, a restart resumes from it.",
              flush=True)
        return 0
    if not job.chief:
        print(f"Worker {job.replicas.worker_index} done after {job.state.global_step} steps; "
              "the chief evaluates and writes the model.", flush=True)
        return 0
    return evaluate_and_export(job)


# ---- 1. folders and strategy ---------------------------------------------------------------
def _folders_and_strategy(job: Job, env) -> dict[str, Any]:
    """The distribution strategy, the output folders, the initial weights' spec; returns
    the Config overrides of the hyperparameters."""
    from casting.config import Config
    from casting.distribute import Replicas
    from casting.training import CheckpointManager, select_strategy

    hp = job.hp
    # The strategy first: MultiWorkerMirroredStrategy must exist before other TF work.
    job.strategy = select_strategy(env)
    job.replicas = Replicas.of(job.strategy)
    if job.replicas.multi_worker:
        # TensorFlow's coordination service installs its own C-level SIGTERM handler when
        # the multi-worker runtime starts (a preemption notifier we do not use), replacing
        # ours: take it back, or a stop or spot reclaim would go unnoticed.
        job.terminate.install()
    channels = env.channels
    hp.values["train"] = hp.train or channels.get("train")
    hp.values["validation"] = hp.validation or channels.get("validation")
    weights_channel = hp.weights or channels.get("weights")
    job.model_dir = _path(hp.model_dir, env.model_dir, "model_dir")
    job.output_dir = _path(hp.output_data_dir, env.output_data_dir, "output_data_dir")
    job.checkpoint_dir = _path(hp.checkpoint_dir, env.checkpoint_dir, "checkpoint_dir")
    job.tensorboard_dir = _path(hp.tensorboard_dir, env.tensorboard_dir, "tensorboard_dir")
    for folder in (job.output_dir, job.tensorboard_dir):
        os.makedirs(folder, exist_ok=True)
    if job.chief:  # a checkpoint folder that cannot take a checkpoint stops us before any work
        CheckpointManager(job.checkpoint_dir).check_writable()

    overrides = hp.config_overrides()
    job.spec = hp.init_weights
    if "init_weights" not in hp.given and weights_channel:
        job.spec = weights_channel
    job.from_scratch = str(job.spec).lower() == "none"
    # From random weights GroupNorm trains (docs/quality.md); pretrained weights are BatchNorm's.
    overrides.setdefault("norm", "group" if job.from_scratch else "batch")
    # --precision (auto by default) unless only --config names one
    if "precision" in hp.given or "precision" not in overrides:
        from casting.precision import resolve

        overrides["precision"], why = resolve(hp.precision)
        print(f"Precision: {overrides['precision']} ({why})", flush=True)
    base = Config()
    overrides.setdefault("seed", int(overrides.get("seed", base.seed)))
    overrides.setdefault("image_size", base.image_size)
    return overrides


# ---- 2. data and config --------------------------------------------------------------------
def _data_and_config(job: Job, overrides: dict[str, Any]) -> None:
    """Load and check the data (a broken dataset stops here, with the check report), then
    the Config and the schedule's Plan."""
    from casting.config import Config
    from casting.training import Plan, total_steps_text

    hp, replicas = job.hp, job.replicas
    job.train_records, job.val_records, job.source = _load_data(hp, overrides,
                                                                hp.on_data_error)
    train_records = job.train_records
    overrides["class_names"] = tuple(train_records.class_names)
    config = job.config = Config().replace(**overrides)
    from casting.qc import load_policy

    job.policy = load_policy(hp.policy, config.class_names)  # a bad policy stops us here
    lr_scale = replicas.num_replicas if config.scale_learning_rate else 1
    job.plan = Plan.from_config(config, lr_scale=lr_scale)
    print(f"Data: {job.source}: {len(train_records)} training / {len(job.val_records)} "
          f"validation images; classes {list(config.class_names)}", flush=True)
    if replicas.num_workers > len(train_records):
        raise ValueError(f"{len(train_records)} training images cannot be shared among "
                         f"{replicas.num_workers} workers (one shard each)")
    job.global_batch = replicas.global_batch(config.batch_size)
    print(f"Schedule: {job.plan.describe()}; {total_steps_text(job.plan)}; batch "
          f"{config.batch_size}"
          + (f" per replica x {replicas.num_replicas} replicas = {job.global_batch} "
             f"(learning rates x{lr_scale})" if replicas.num_replicas > 1 else ""), flush=True)
    if replicas.multi_worker:
        share = len(range(replicas.worker_index, len(train_records), replicas.num_workers))
        role = " (chief: writes the model, evaluation, checkpoints and TensorBoard)" \
            if job.chief else ""
        print(f"Worker {replicas.worker_index} of {replicas.num_workers}{role}; this worker "
              f"reads {share} of the {len(train_records)} training images", flush=True)


# ---- 3. the model: resumed or initialised --------------------------------------------------
def _model_and_state(job: Job) -> None:
    """Build and compile the model; restore the newest valid checkpoint or load the initial
    weights; calibrate frozen BatchNorm from random weights; with several replicas start
    every one from the chief's values."""
    from casting.training import (CheckpointManager, TrainState, build_optimizer_for_all_layers,
                                  check_resumable, make_optimizer, provenance, seed_everything)

    hp, config, plan = job.hp, job.config, job.plan
    seed_everything(config.seed)
    if hp.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        # (determinism requires the global generator, which checkpoints record, to be set)
        tf.random.set_global_generator(tf.random.Generator.from_seed(config.seed))
        print("Deterministic op kernels: on (--deterministic)", flush=True)
    job.manager = CheckpointManager(job.checkpoint_dir, keep=config.keep_checkpoints)
    data = provenance(job.source, job.train_records, job.val_records)
    latest = job.manager.latest_valid() if hp.resume else None
    if latest is not None:
        changed = check_resumable(latest[0], latest[1].config, latest[1].extra.get("data"),
                                  config, data)
        if changed:
            log.warning("resuming with changed hyperparameters: %s", changed)
    elif not hp.resume and job.chief:
        moved = job.manager.set_aside()
        if moved:
            print(f"--resume False: moved the earlier checkpoints into {moved}", flush=True)
    from casting.model import MaskRCNN

    with job.strategy.scope():
        job.model = MaskRCNN(config)
        # MaskRCNN adds weight decay as an L2 loss on its kernels: not again in SGD.
        job.optimizer = make_optimizer(config, plan, decoupled_weight_decay=False)
        job.model.compile(optimizer=job.optimizer)
        build_optimizer_for_all_layers(job.model, job.optimizer, plan.stage_for_epoch(0).layers)

    if latest is not None:
        job.state = _restore(job, *latest)
    else:
        from casting.model.weights import load_init_weights

        print(f"Starting a new run (no checkpoint to resume); initial weights: {job.spec}",
              flush=True)
        print(load_init_weights(job.model, job.spec).summary(), flush=True)
        job.state = TrainState(seed=config.seed)
    job.state.config = config.to_dict()
    job.state.extra["data"] = data
    if job.chief:
        job.manager.cleanup_partial()
    # Random weights with frozen BatchNorm diverge: start them from one batch's statistics.
    if latest is None and job.from_scratch:
        from casting.data.pipeline import make_dataset

        first = next(iter(make_dataset(job.train_records, config, training=True)))
        if job.model.calibrate_batchnorm(first):
            print("Calibrated the frozen BatchNorm statistics on one training batch",
                  flush=True)
    if job.replicas.num_replicas > 1:
        _start_from_chief(job)


def _restore(job: Job, path: str, saved) -> Any:
    plan = job.plan
    state = job.manager.restore(path, job.model, job.optimizer)
    saved_spe = int(saved.config.get("steps_per_epoch", plan.steps_per_epoch))
    if saved_spe != plan.steps_per_epoch:
        # the position is the global step; epochs are counted in the new length
        state.epoch, state.step_in_epoch = divmod(state.global_step, plan.steps_per_epoch)
        state.stage = plan.stage_for_epoch(state.epoch).index
        print(f"steps-per-epoch changed from {saved_spe} to {plan.steps_per_epoch}: the "
              f"checkpoint's {state.global_step} steps count as {state.epoch} epochs and "
              f"{state.step_in_epoch} steps now", flush=True)
    print(f"Resuming from checkpoint {path}: epoch {state.epoch + 1}, step "
          f"{state.step_in_epoch} of {plan.steps_per_epoch} (global step "
          f"{state.global_step}, stage {state.stage + 1})", flush=True)
    return state


def _start_from_chief(job: Job) -> None:
    """Each worker loaded, restored or calibrated on its own: start all from the chief's."""
    from casting.distribute import broadcast_from_chief, broadcast_int
    from casting.training import TrainState

    strategy, state, plan = job.strategy, job.state, job.plan
    count = broadcast_from_chief(strategy, list(job.model.weights)
                                 + list(job.optimizer.variables))
    chief_step = broadcast_int(strategy, state.global_step)
    if chief_step != state.global_step:
        log.warning("this worker's checkpoint is at step %d, the chief's at %d: "
                    "continuing from the chief's", state.global_step, chief_step)
        state = job.state = TrainState(seed=job.config.seed, config=state.config)
        state.global_step = chief_step
        state.epoch, state.step_in_epoch = divmod(chief_step, plan.steps_per_epoch)
        state.stage = plan.stage_for_epoch(state.epoch).index
    print(f"Replicas start from the chief's values of {count} variables", flush=True)


# ---- 4. the input streams and the loop -----------------------------------------------------
def _train(job: Job):
    """Run the training loop over the resumable training stream; returns the loop."""
    from casting.distribute import any_worker, distributed_dataset, weights_digest
    from casting.data.pipeline import make_dataset
    from casting.training import ScalarSummaries, TrainingLoop, repeat_if_finite

    hp, config, plan, replicas, strategy = job.hp, job.config, job.plan, job.replicas, job.strategy
    train_records, val_records = job.train_records, job.val_records
    shard_validation = len(val_records) >= replicas.num_workers

    def train_data_from(step: int):
        """The training stream from global step `step` on: the same images, order and
        augmentation as an uninterrupted run from step 0 (casting.data.pipeline, `skip`)."""
        def train_fn(context, batch):
            pipelines = context.num_input_pipelines if context is not None else 1
            per_step = job.global_batch // pipelines  # images this pipeline gives each step
            return make_dataset(train_records, config, training=True, batch_size=batch,
                                input_context=context, skip=step * per_step)

        data = distributed_dataset(strategy, replicas, train_fn, config.batch_size)
        return repeat_if_finite(data) if replicas.num_replicas <= 1 else data

    def val_fn(context, batch):
        return make_dataset(val_records, config, training=False, batch_size=batch,
                            input_context=context if shard_validation else None, repeat=True)

    val_data = distributed_dataset(strategy, replicas, val_fn, config.batch_size)
    if replicas.num_replicas <= 1:
        val_data = repeat_if_finite(val_data)
    validation_steps = max(1, min(config.validation_steps,
                                  math.ceil(len(val_records) / config.batch_size)))

    def on_epoch_end(st):
        every = hp.eval_every_epochs
        if every and st.epoch % every == 0 and st.epoch < plan.total_epochs:
            evaluate(job, st.epoch, final=False)

    chief = job.chief
    extra = [ScalarSummaries(job.tensorboard_dir)] if chief else []
    loop = TrainingLoop(
        job.model, plan, job.state, job.manager if chief else None, terminate=job.terminate,
        checkpoint_every_steps=config.checkpoint_every_steps,
        history_csv=history_csv_path(job) if chief else None,
        validation_steps=validation_steps, extra_callbacks=extra,
        on_epoch_end=on_epoch_end if chief else None,
        verbose=1 if sys.stdout.isatty() else 2, log_every_steps=hp.log_every_steps,
        agree=(lambda flag: any_worker(strategy, flag)) if replicas.multi_worker else None)
    for callback in extra:
        callback.loop = loop
    if job.state.epoch >= plan.total_epochs:
        print(f"Training already complete ({job.state.epoch} epochs): evaluating and exporting",
              flush=True)
    loop.run(train_data_from, val_data)
    if replicas.num_replicas > 1:
        print(f"Weights digest (worker {replicas.worker_index}, global step "
              f"{job.state.global_step}): {weights_digest(job.model.weights)}", flush=True)
    return loop


# ---- helpers --------------------------------------------------------------------------------
def _path(value: str | None, fallback: str, what: str) -> str:
    if value and value.startswith("s3://"):
        log.warning("ignoring %s=%s (an S3 URI; writing to %s, which SageMaker uploads)",
                    what, value, fallback)
        return fallback
    return os.path.abspath(value) if value else fallback


def _load_data(hp, config_overrides, on_error):
    """(train records, validation records, description)."""
    from casting.data import load_dataset, split_records

    seed = int(config_overrides.get("seed", 42))
    class_names = hp.class_names
    if hp.train:
        print(f"Loading training data from {hp.train}", flush=True)
        train = load_dataset(hp.train, class_names=class_names, on_error=on_error)
        source = hp.train
    else:
        from casting.data.synthetic import generate_records

        size = int(config_overrides.get("image_size", 512))
        out_dir = tempfile.mkdtemp(prefix="casting-synthetic-")
        print(f"No training data given: generating {hp.synthetic_images} synthetic castings "
              f"({size}x{size}, seed {seed}) in {out_dir}", flush=True)
        train = generate_records(hp.synthetic_images, seed=seed, size=size, out_dir=out_dir,
                                 good_fraction=hp.synthetic_good_fraction)
        source = "synthetic"
    if hp.validation:
        print(f"Loading validation data from {hp.validation}", flush=True)
        val = load_dataset(hp.validation, class_names=train.class_names, on_error=on_error)
    elif hp.val_fraction > 0 and len(train) >= 2:
        train, val = split_records(train, hp.val_fraction, seed)
        print(f"No validation channel: held out {len(val)} of {len(train) + len(val)} images "
              f"(val_fraction {hp.val_fraction}, seed {seed})", flush=True)
    else:
        val = train
        log.warning("no validation data: validating and evaluating on the training images")
    if len(train) == 0:
        raise ValueError("the training set is empty")
    return train, val, source
