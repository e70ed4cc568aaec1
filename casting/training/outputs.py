"""The end of a training job (casting.training.job): the final COCO and part-level
evaluation (evaluation.json), history.csv, the overlays, then the model folder with its
acceptance policy (policy.json). Also the evaluation every few epochs."""

from __future__ import annotations

import json
import os
import time


def history_csv_path(job) -> str:
    """Where the job's history.csv goes (``job``: a casting.training.job.Job)."""
    return os.path.join(job.output_dir, "history.csv")


def evaluate(job, epoch: int, final: bool):
    from casting.evaluation import evaluate_model, flat_metrics
    from casting.metrics import format_eval_line

    hp = job.hp
    metrics, kept = evaluate_model(
        job.model, job.val_records.records, job.config.class_names,
        max_images=hp.eval_max_images, should_stop=job.terminate.is_set,
        keep_images=hp.overlays if final else 0, min_confidence=hp.eval_min_confidence,
        policy=job.policy,
        # a model trained on crops at native scale sees frames by tiles of its input size
        tile="on" if job.config.train_native_scale else None)
    print(format_eval_line({"epoch": epoch, **flat_metrics(metrics)}), flush=True)
    return metrics, kept


def evaluate_and_export(job) -> int:
    """history.csv, the final COCO evaluation (evaluation.json), the overlays and the model
    folder, in that order."""
    from casting.metrics import per_class_line
    from casting.model import save_model_dir
    from casting.training import write_history_csv
    from casting.visualize import write_overlays

    state, config, output_dir = job.state, job.config, job.output_dir
    write_history_csv(state.history, history_csv_path(job))
    try:
        metrics, kept = evaluate(job, state.epoch, final=True)
    except InterruptedError:
        print("Stopped by signal during the final evaluation; a restart redoes it.", flush=True)
        return 0
    metrics.update({
        "epochs": state.epoch, "global_step": state.global_step,
        "class_names": list(config.class_names), "data": job.source,
        "train_images": len(job.train_records), "evaluated_images": metrics["num_images"],
        "training_seconds": round(time.time() - job.started, 1),
    })
    _write_json(os.path.join(output_dir, "evaluation.json"), metrics)
    overlays = write_overlays(kept, config.class_names, os.path.join(output_dir, "overlays"),
                         config.detection_min_confidence)
    print(f"Wrote {output_dir}/evaluation.json, history.csv and {len(overlays)} overlays",
          flush=True)
    save_model_dir(job.model, job.model_dir, saved_model=job.hp.saved_model)
    _write_policy(job)
    print(f"Saved the model to {job.model_dir}", flush=True)
    print(f"Done in {time.time() - job.started:.0f}s: segm AP {metrics['segm']['AP']}, "
          f"bbox AP {metrics['bbox']['AP']}", flush=True)
    print(per_class_line(metrics), flush=True)
    return 0


def _write_policy(job) -> None:
    """The acceptance policy beside the model (casting.qc.POLICY_FILE), which serving uses."""
    from casting.files import write_atomic
    from casting.qc import POLICY_FILE

    write_atomic(os.path.join(job.model_dir, POLICY_FILE), job.policy.to_json() + "\n")


def _write_json(path: str, data) -> None:
    from casting.files import write_atomic

    write_atomic(path, json.dumps(data, indent=2, sort_keys=False))
