#!/usr/bin/env python
"""SageMaker script-mode training of Mask R-CNN (ResNet50-FPN) on casting defects.

Run by the ``sagemaker-training`` toolkit (or the image's ``train`` launcher, which execs
this script so that SIGTERM reaches it), or by hand::

    python train.py                                   # embedded synthetic dataset
    python train.py --train ../shared/data/casting-real --epochs 10 --init-weights imagenet

See ``docs/training.md`` and ``python train.py --help``. In short:

* hyperparameters are parsed tolerantly (``casting.hparams``);
* data: channels ``train`` / ``validation`` (Supervisely or COCO), else the synthetic set;
* checkpoints every N steps and at epoch ends, atomically; the newest valid one is resumed
  (weights, optimizer, epoch, step, stage, random state); SIGTERM checkpoints at the end of
  the step under way and exits 0; a NaN or infinite loss or gradient norm stops the run
  with exit 1 before anything is written from those weights (docs/training.md);
* outputs: the model folder (``SM_MODEL_DIR``), ``evaluation.json`` + ``history.csv`` +
  overlays (``SM_OUTPUT_DATA_DIR``), TensorBoard logs, one ``[eval]`` metrics line per
  evaluation; any exception writes a short reason to the failure file and exits 1.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time

log = logging.getLogger("train")


def _setup_logging() -> None:
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except AttributeError:  # pragma: no cover - not a TextIOWrapper
        pass
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TensorFlow's Python logger would print every collective all-reduce at INFO.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _path(value: str | None, fallback: str, what: str) -> str:
    if value and value.startswith("s3://"):
        log.warning("ignoring %s=%s (an S3 URI; writing to %s, which SageMaker uploads)",
                    what, value, fallback)
        return fallback
    return os.path.abspath(value) if value else fallback


def _write_json(path: str, data) -> None:
    from casting.files import write_atomic

    write_atomic(path, json.dumps(data, indent=2, sort_keys=False))


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
        train = generate_records(hp.synthetic_images, seed=seed, size=size, out_dir=out_dir)
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


def _overlays(kept, class_names, out_dir, min_score: float) -> list[str]:
    """PNGs of the kept validation images with the detections a deployed model would
    return (score above the config's detection_min_confidence)."""
    import numpy as np

    try:
        from casting.visualize import draw_detections, save_png
    except ImportError:
        log.warning("casting.visualize is not available: no overlays written")
        return []
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for rec, image, det in kept:
        keep = np.flatnonzero(np.asarray(det["scores"]) > min_score)
        det = {k: np.asarray(det[k])[keep] for k in ("boxes", "class_ids", "scores", "masks")}
        drawn = draw_detections(image, boxes=det["boxes"], class_ids=det["class_ids"],
                                scores=det["scores"], masks=det["masks"],
                                class_names=class_names, box_format="yxyx")
        stem = os.path.splitext(os.path.basename(rec.image_id))[0]
        path = os.path.join(out_dir, f"{stem}.png")
        save_png(drawn, path)
        written.append(path)
    return written


def run(hp, env, terminate) -> int:
    """Train, evaluate, export. Returns the exit code (0 also after a stop signal)."""
    from casting.config import Config
    from casting.distribute import (Replicas, any_worker, broadcast_from_chief, broadcast_int,
                                    distributed_dataset, weights_digest)
    from casting.evaluation import evaluate_model, flat_metrics
    from casting.metrics import format_eval_line
    from casting.training import (CheckpointManager, Plan, ScalarSummaries, TrainState,
                                  TrainingLoop, check_resumable, provenance,
                                  build_optimizer_for_all_layers, make_optimizer,
                                  repeat_if_finite, seed_everything, select_strategy,
                                  total_steps_text, write_history_csv)

    started = time.time()
    # The strategy first: MultiWorkerMirroredStrategy must exist before other TF work.
    strategy = select_strategy(env)
    replicas = Replicas.of(strategy)
    if replicas.multi_worker:
        # TensorFlow's coordination service installs its own C-level SIGTERM handler when
        # the multi-worker runtime starts (a preemption notifier we do not use), replacing
        # ours: take it back, or a stop or spot reclaim would go unnoticed.
        terminate.install()
    chief = replicas.is_chief
    channels = env.channels
    hp.values["train"] = hp.train or channels.get("train")
    hp.values["validation"] = hp.validation or channels.get("validation")
    weights_channel = hp.weights or channels.get("weights")
    model_dir = _path(hp.model_dir, env.model_dir, "model_dir")
    output_dir = _path(hp.output_data_dir, env.output_data_dir, "output_data_dir")
    checkpoint_dir = _path(hp.checkpoint_dir, env.checkpoint_dir, "checkpoint_dir")
    tensorboard_dir = _path(hp.tensorboard_dir, env.tensorboard_dir, "tensorboard_dir")
    for folder in (output_dir, tensorboard_dir):
        os.makedirs(folder, exist_ok=True)
    if chief:  # a checkpoint folder that cannot take a checkpoint stops us before any work
        CheckpointManager(checkpoint_dir).check_writable()

    overrides = hp.config_overrides()
    spec = hp.init_weights
    if "init_weights" not in hp.given and weights_channel:
        spec = weights_channel
    from_scratch = str(spec).lower() == "none"
    # From random weights GroupNorm trains (docs/quality.md); pretrained weights are BatchNorm's.
    overrides.setdefault("norm", "group" if from_scratch else "batch")
    base = Config()
    seed = int(overrides.get("seed", base.seed))
    overrides.setdefault("seed", seed)
    overrides.setdefault("image_size", base.image_size)

    # ---- data (a broken dataset stops here, with the check report) ---------------------
    train_records, val_records, source = _load_data(hp, overrides, hp.on_data_error)
    overrides["class_names"] = tuple(train_records.class_names)
    config = base.replace(**overrides)
    lr_scale = replicas.num_replicas if config.scale_learning_rate else 1
    plan = Plan.from_config(config, lr_scale=lr_scale)
    print(f"Data: {source}: {len(train_records)} training / {len(val_records)} validation "
          f"images; classes {list(config.class_names)}", flush=True)
    if replicas.num_workers > len(train_records):
        raise ValueError(f"{len(train_records)} training images cannot be shared among "
                         f"{replicas.num_workers} workers (one shard each)")
    global_batch = replicas.global_batch(config.batch_size)
    print(f"Schedule: {plan.describe()}; {total_steps_text(plan)}; batch {config.batch_size}"
          + (f" per replica x {replicas.num_replicas} replicas = {global_batch} "
             f"(learning rates x{lr_scale})" if replicas.num_replicas > 1 else ""), flush=True)
    if replicas.multi_worker:
        share = len(range(replicas.worker_index, len(train_records), replicas.num_workers))
        role = " (chief: writes the model, evaluation, checkpoints and TensorBoard)" if chief \
            else ""
        print(f"Worker {replicas.worker_index} of {replicas.num_workers}{role}; this worker reads "
              f"{share} of the {len(train_records)} training images", flush=True)

    # ---- model ---------------------------------------------------------------------------
    seed_everything(config.seed)
    if hp.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        # (determinism requires the global generator, which checkpoints record, to be set)
        tf.random.set_global_generator(tf.random.Generator.from_seed(config.seed))
        print("Deterministic op kernels: on (--deterministic)", flush=True)
    manager = CheckpointManager(checkpoint_dir, keep=config.keep_checkpoints)
    data = provenance(source, train_records, val_records)
    latest = manager.latest_valid() if hp.resume else None
    if latest is not None:
        changed = check_resumable(latest[0], latest[1].config, latest[1].extra.get("data"),
                                  config, data)
        if changed:
            log.warning("resuming with changed hyperparameters: %s", changed)
    elif not hp.resume and chief:
        moved = manager.set_aside()
        if moved:
            print(f"--resume False: moved the earlier checkpoints into {moved}", flush=True)
    from casting.model import MaskRCNN, save_model_dir

    with strategy.scope():
        model = MaskRCNN(config)
        # MaskRCNN adds weight decay as an L2 loss on its kernels: not again in SGD.
        optimizer = make_optimizer(config, plan, decoupled_weight_decay=False)
        model.compile(optimizer=optimizer)
        build_optimizer_for_all_layers(model, optimizer, plan.stage_for_epoch(0).layers)

    if latest is not None:
        path, saved = latest
        state = manager.restore(path, model, optimizer)
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
    else:
        from casting.model.weights import load_init_weights

        print(f"Starting a new run (no checkpoint to resume); initial weights: {spec}",
              flush=True)
        report = load_init_weights(model, spec)
        print(report.summary(), flush=True)
        state = TrainState(seed=config.seed)
    # Random weights with frozen BatchNorm diverge: start them from one batch's statistics.
    calibrate = latest is None and from_scratch
    state.config = config.to_dict()
    state.extra["data"] = data
    if chief:
        manager.cleanup_partial()

    from casting.data.pipeline import make_dataset

    if calibrate:
        first = next(iter(make_dataset(train_records, config, training=True)))
        if model.calibrate_batchnorm(first):
            print("Calibrated the frozen BatchNorm statistics on one training batch",
                  flush=True)
    if replicas.num_replicas > 1:
        # Each worker loaded, restored or calibrated on its own: start all from the chief's.
        count = broadcast_from_chief(strategy, list(model.weights) + list(optimizer.variables))
        chief_step = broadcast_int(strategy, state.global_step)
        if chief_step != state.global_step:
            log.warning("this worker's checkpoint is at step %d, the chief's at %d: "
                        "continuing from the chief's", state.global_step, chief_step)
            state = TrainState(seed=config.seed, config=state.config)
            state.global_step = chief_step
            state.epoch, state.step_in_epoch = divmod(chief_step, plan.steps_per_epoch)
            state.stage = plan.stage_for_epoch(state.epoch).index
        print(f"Replicas start from the chief's values of {count} variables", flush=True)

    shard_validation = len(val_records) >= replicas.num_workers

    def train_data_from(step: int):
        """The training stream from global step `step` on: the same images, order and
        augmentation as an uninterrupted run from step 0 (casting.data.pipeline, `skip`)."""
        def train_fn(context, batch):
            pipelines = context.num_input_pipelines if context is not None else 1
            per_step = global_batch // pipelines  # images this pipeline gives each step
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

    history_csv = os.path.join(output_dir, "history.csv")

    def evaluate(epoch: int, final: bool):
        metrics, kept = evaluate_model(
            model, val_records.records, config.class_names, max_images=hp.eval_max_images,
            should_stop=terminate.is_set, keep_images=hp.overlays if final else 0,
            min_confidence=hp.eval_min_confidence)
        print(format_eval_line({"epoch": epoch, **flat_metrics(metrics)}), flush=True)
        return metrics, kept

    def on_epoch_end(st):
        every = hp.eval_every_epochs
        if every and st.epoch % every == 0 and st.epoch < plan.total_epochs:
            evaluate(st.epoch, final=False)

    extra = [ScalarSummaries(tensorboard_dir)] if chief else []
    loop = TrainingLoop(
        model, plan, state, manager if chief else None, terminate=terminate,
        checkpoint_every_steps=config.checkpoint_every_steps,
        history_csv=history_csv if chief else None,
        validation_steps=validation_steps, extra_callbacks=extra,
        on_epoch_end=on_epoch_end if chief else None,
        verbose=1 if sys.stdout.isatty() else 2, log_every_steps=hp.log_every_steps,
        agree=(lambda flag: any_worker(strategy, flag)) if replicas.multi_worker else None)
    for callback in extra:
        callback.loop = loop
    if state.epoch >= plan.total_epochs:
        print(f"Training already complete ({state.epoch} epochs): evaluating and exporting",
              flush=True)
    loop.run(train_data_from, val_data)
    if replicas.num_replicas > 1:
        print(f"Weights digest (worker {replicas.worker_index}, global step "
              f"{state.global_step}): {weights_digest(model.weights)}", flush=True)
    if loop.interrupted:
        print(f"Stopped by signal at epoch {state.epoch + 1} step {state.step_in_epoch}; "
              "the checkpoint is saved, a restart resumes from it.", flush=True)
        return 0
    if not chief:
        print(f"Worker {replicas.worker_index} done after {state.global_step} steps; the chief "
              "evaluates and writes the model.", flush=True)
        return 0
    write_history_csv(state.history, history_csv)

    # ---- evaluation + outputs -------------------------------------------------------------
    try:
        metrics, kept = evaluate(state.epoch, final=True)
    except InterruptedError:
        print("Stopped by signal during the final evaluation; a restart redoes it.", flush=True)
        return 0
    metrics.update({
        "epochs": state.epoch, "global_step": state.global_step,
        "class_names": list(config.class_names), "data": source,
        "train_images": len(train_records), "evaluated_images": metrics["num_images"],
        "training_seconds": round(time.time() - started, 1),
    })
    _write_json(os.path.join(output_dir, "evaluation.json"), metrics)
    overlays = _overlays(kept, config.class_names, os.path.join(output_dir, "overlays"),
                         config.detection_min_confidence)
    print(f"Wrote {output_dir}/evaluation.json, history.csv and {len(overlays)} overlays",
          flush=True)
    save_model_dir(model, model_dir, saved_model=hp.saved_model)
    print(f"Saved the model to {model_dir}", flush=True)
    print(f"Done in {time.time() - started:.0f}s: segm AP {metrics['segm']['AP']}, "
          f"bbox AP {metrics['bbox']['AP']}", flush=True)
    print(_per_class_line(metrics), flush=True)
    return 0


def _per_class_line(metrics) -> str:
    """'segm AP50 per class on the N evaluated images: disk 1.00, holes 0.92, ...' (n/a
    where the evaluated images hold no object of the class)."""
    per_class = metrics["segm"].get("per_class_AP50") or {}
    parts = [f"{name} {'n/a' if value is None else f'{value:.2f}'}"
             for name, value in per_class.items()]
    return (f"segm AP50 per class on the {metrics['num_images']} evaluated images: "
            + ", ".join(parts))


def _exit_now(code: int) -> None:
    """Leave at once after a stop signal. The checkpoint is on disk (fsynced) and nothing
    else is left to do; TensorFlow's teardown of the input pipeline's threads can take
    longer than the 120 s SageMaker grants before SIGKILL."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def main(argv=None) -> int:
    _setup_logging()
    from casting.errors import Explained
    from casting.hparams import parse_hyperparameters
    from casting.sagemaker import SageMakerEnv, write_failure
    failure_file = None
    try:
        env = SageMakerEnv.from_env()
        failure_file = env.failure_file
        hp = parse_hyperparameters(argv)  # --help prints and exits 0 here
        if hp.output_data_dir and "output_data_dir" in hp.given:
            # the failure file goes with the outputs given (SageMaker: /opt/ml/output/failure)
            failure_file = os.path.join(os.path.dirname(os.path.abspath(hp.output_data_dir)),
                                        "failure")
        if os.path.isfile(failure_file):  # an earlier run's; this run writes its own
            os.remove(failure_file)
        from casting.quiet import import_tensorflow

        import_tensorflow()  # without its CUDA probing noise on a CPU machine
        from casting.training import TerminationFlag

        terminate = TerminationFlag().install()
        code = run(hp, env, terminate)
        if terminate.is_set():
            _exit_now(code)
        return code
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure must be reported
        if isinstance(exc, Explained):
            # The message says what happened and what to do; a traceback would bury it.
            print(f"Training stopped: {exc}", file=sys.stderr, flush=True)
        else:
            log.exception("training failed")
        if failure_file:
            try:
                text = write_failure(failure_file, exc)
                print(f"Failure reason written to {failure_file}"
                      + ("" if isinstance(exc, Explained) else f": {text}"), flush=True)
            except OSError as write_exc:
                log.error("cannot write the failure file %s: %s", failure_file, write_exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
