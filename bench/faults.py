#!/usr/bin/env python
"""Fault injection on train.py: SIGKILLs and SIGTERMs at random moments with a restart after
each, a full disk, and a checkpoint folder that is a file or vanishes mid-run.

    python bench/faults.py [--kills 20] [--terms 5] [--epochs 3] [--steps-per-epoch 50]
        [--checkpoint-every 5] [--seed 0] [--work DIR] [--out faults.json]

All runs train the same small Mask R-CNN (64 px synthetic castings, batch 1, narrow heads)
with the same seed and data. Reported:

- an uninterrupted reference run's final weights;
- the faulted run: every fault is followed by a restart of the same command, then a run to
  the end. Per restart whether it resumed, whether it had to skip a partial or damaged
  checkpoint, and the steps lost (the last step the killed run logged minus the step the
  restart resumed at: at most --checkpoint-every for SIGKILL, 0 for SIGTERM); for SIGTERM
  the seconds from the signal to the process exit (SageMaker allows 120);
- whether the faulted run's final weights equal the reference's (max |difference|);
- a disk that fills up (a file-size limit, RLIMIT_FSIZE, below the weights file) while a
  checkpoint is written: the exit code, the error line, and whether the earlier checkpoint
  is intact;
- a file where the checkpoint folder should be (fails before training) and the folder
  removed mid-run (made again; the run finishes).

A quarter of the kills wait for a checkpoint write to be in progress (a `.tmp-ckpt-` folder),
the rest come at a uniform random moment after training started. The last line is
`faults key=value ...`; --out also writes the figures as JSON. Not a test: docs/training.md
quotes its figures.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {
    "fpn_channels": 32, "rpn_conv_channels": 32, "fc_layers_size": 64, "pre_nms_limit": 500,
    "post_nms_rois_training": 64, "post_nms_rois_inference": 64, "train_rois_per_image": 32,
    "detection_max_instances": 10, "max_gt_instances": 10, "validation_steps": 1,
}
STEP_LINE = re.compile(r"^step (\d+)/\d+ ", re.M)
RESUME_LINE = re.compile(r"Resuming from checkpoint \S+: epoch \d+, step \d+ of \d+ "
                         r"\(global step (\d+)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--terms", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seed of the fault moments")
    p.add_argument("--deterministic", type=int, default=1,
                   help="1: train.py --deterministic True (bit-exact kernels), so the final "
                        "weights can equal the reference's exactly; 0: TensorFlow's default "
                        "kernels, equal to float rounding only")
    p.add_argument("--work", default=None, help="folder for the runs (default: a temp one)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the run folders")
    return p.parse_args(argv)


class Run:
    """train.py in a subprocess with its output in a file."""

    def __init__(self, args, base, log_path, fsize_limit=None):
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        env["SAGEMAKER_BASE_DIR"] = base
        for key in [k for k in env if k.startswith("SM_")]:
            del env[key]
        self.log_path = log_path
        self.fh = open(log_path, "w")

        def limit():
            if fsize_limit:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))

        self.started = time.monotonic()
        self.p = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args],
                                  stdout=self.fh, stderr=subprocess.STDOUT, env=env, cwd=base,
                                  preexec_fn=limit, start_new_session=True)

    @property
    def text(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def wait_for(self, predicate, timeout=600.0, poll=0.05) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.p.poll() is not None:
                return False
            if predicate():
                return True
            time.sleep(poll)
        return False

    def finish(self, timeout=900.0) -> int:
        try:
            return self.p.wait(timeout=timeout)
        finally:
            self.fh.close()


def train_args(a, base, epochs=None, steps_per_epoch=None):
    return ["--image-size", "64", "--batch-size", "1", "--epochs", str(epochs or a.epochs),
            "--steps-per-epoch", str(steps_per_epoch or a.steps_per_epoch),
            "--checkpoint-every-steps", str(a.checkpoint_every), "--keep-checkpoints", "3",
            "--init-weights", "none", "--train", os.path.join(base, "..", "data"),
            "--augment", "True", "--saved-model", "False", "--overlays", "0",
            "--eval-max-images", "2", "--log-every-steps", "1",
            "--deterministic", str(bool(a.deterministic)),
            "--model-dir", os.path.join(base, "model"),
            "--checkpoint-dir", os.path.join(base, "checkpoints"),
            "--output-data-dir", os.path.join(base, "output"),
            "--tensorboard-dir", os.path.join(base, "tensorboard"),
            "--config", json.dumps(SMALL)]


def last_step(text: str) -> int:
    steps = STEP_LINE.findall(text)
    return int(steps[-1]) if steps else -1


def resumed_at(text: str) -> int | None:
    found = RESUME_LINE.search(text)
    return int(found.group(1)) if found else None


def final_weights(base: str) -> list[np.ndarray]:
    import h5py

    arrays = []
    with h5py.File(os.path.join(base, "model", "model.weights.h5"), "r") as fh:
        fh.visititems(lambda name, obj: arrays.append((name, obj[()]))
                      if isinstance(obj, h5py.Dataset) else None)
    return [value for _, value in sorted(arrays, key=lambda item: item[0])]


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
               if x.size else 0.0 for x, y in zip(a, b))


def folder(work: str, name: str) -> str:
    path = os.path.join(work, name, "ml")
    os.makedirs(path)
    return path


def step_seconds(text: str) -> float:
    """The median seconds per step of a run's step lines (after the first, which traces)."""
    rates = [float(x) for x in re.findall(r"^step \d+/\d+ \(.*?\) ([0-9.]+)s/step", text, re.M)]
    return float(np.median(rates[1:])) if len(rates) > 1 else 1.0


def faulted(a, work, rng, log, window):
    """Kills and terms in a random order, each followed by a restart; then the rest."""
    base = folder(work, "faulted")
    ckpt = os.path.join(base, "checkpoints")
    faults = ["kill"] * a.kills + ["term"] * a.terms
    rng.shuffle(faults)
    during_write = set(rng.sample(range(len(faults)), k=len([f for f in faults
                                                              if f == "kill"]) // 4))
    rows = []
    for i, kind in enumerate(faults):
        run = Run(train_args(a, base), base, os.path.join(base, f"run{i:02d}.log"))
        # training is under way once the run logs a step (the first one traces the graph)
        started = run.wait_for(lambda: STEP_LINE.search(run.text) is not None)
        if not started:
            rc = run.finish()
            rows.append({"fault": kind, "note": f"ended before training (rc {rc})"})
            break
        at_write = kind == "kill" and i in during_write
        if at_write:
            hit = run.wait_for(lambda: any(n.startswith(".tmp-ckpt-")
                                           for n in os.listdir(ckpt)), timeout=120, poll=0.005)
        else:
            time.sleep(rng.uniform(0.0, window))
            hit = run.p.poll() is None
        if run.p.poll() is not None:  # finished before the fault: the run is over
            run.finish()
            rows.append({"fault": kind, "note": "the run had finished"})
            break
        sent = time.monotonic()
        run.p.send_signal(signal.SIGKILL if kind == "kill" else signal.SIGTERM)
        rc = run.finish(timeout=300)
        exit_s = time.monotonic() - sent
        text = run.text
        done = last_step(text)
        done = (resumed_at(text) or 0) if done < 0 else done
        row = {"fault": kind, "at_write": bool(at_write and hit), "rc": rc,
               "steps_done": done, "exit_s": round(exit_s, 1) if kind == "term" else None,
               "resumed_from": resumed_at(text), "stop_line": "Stopped by signal" in text}
        rows.append(row)
        log(f"fault {i + 1}/{len(faults)}: {kind}{' during a checkpoint write' if row['at_write'] else ''}"
            f" after step {done} (rc {rc}" + (f", exit {exit_s:.1f}s after the signal"
                                               if kind == "term" else "") + ")")
    final = Run(train_args(a, base), base, os.path.join(base, "final.log"))
    rc = final.finish()
    text = final.text
    logs = sorted(glob.glob(os.path.join(base, "run*.log"))) + [os.path.join(base, "final.log")]
    texts = [open(p, errors="replace").read() for p in logs]
    # steps lost: what fault i's run had done minus where run i+1 resumed
    for i, row in enumerate(rows):
        if "steps_done" not in row or i + 1 >= len(texts):
            continue
        resumed = resumed_at(texts[i + 1])
        row["next_resumed_at"] = resumed
        row["steps_lost"] = row["steps_done"] - (resumed or 0)
        row["next_skipped"] = ("skipping partial checkpoint" in texts[i + 1]
                               or "skipping corrupt checkpoint" in texts[i + 1])
    return base, rows, rc, text


def disk_full(a, work, log):
    """A first run writes checkpoints; a second, resumed, may not write files over the
    limit (below the weights file's size): its next checkpoint fails."""
    base = folder(work, "disk-full")
    first = Run(train_args(a, base, epochs=1, steps_per_epoch=a.checkpoint_every), base,
                os.path.join(base, "first.log"))  # one checkpoint, at its epoch's end
    rc1 = first.finish()
    ckpts = sorted(glob.glob(os.path.join(base, "checkpoints", "ckpt-*")))
    weights = os.path.getsize(os.path.join(ckpts[-1], "model.weights.h5")) if ckpts else 0
    limit = max(1 << 20, weights // 2)
    second = Run(train_args(a, base, epochs=2, steps_per_epoch=a.checkpoint_every), base,
                 os.path.join(base, "second.log"), fsize_limit=limit)
    rc2 = second.finish()
    text = second.text
    line = next((ln for ln in text.splitlines() if ln.startswith("Training stopped:")), "")
    from casting.training import CheckpointManager

    found = CheckpointManager(os.path.join(base, "checkpoints")).latest_valid()
    result = {"first_rc": rc1, "rc": rc2, "limit_bytes": limit, "weights_bytes": weights,
              "error": line[:400],
              "previous_checkpoint_intact": bool(found and ckpts
                                                 and found[0] == ckpts[-1]),
              "partial_left": [n for n in os.listdir(os.path.join(base, "checkpoints"))
                               if n.startswith(".")]}
    log(f"disk full: rc {rc2}; {line[:200]}")
    return result


def bad_folders(a, work, log):
    base = folder(work, "not-a-folder")
    open(os.path.join(base, "checkpoints"), "w").close()  # a file where the folder goes
    run = Run(train_args(a, base), base, os.path.join(base, "run.log"))
    rc = run.finish()
    elapsed = time.monotonic() - run.started
    text = run.text
    line = next((ln for ln in text.splitlines() if ln.startswith("Training stopped:")), "")
    file_case = {"rc": rc, "error": line[:300], "seconds": round(elapsed, 1),
                 "trained": "Stage 1/" in text}
    log(f"file as folder: rc {rc} after {elapsed:.0f}s; {line[:160]}")

    base = folder(work, "vanishes")
    ckpt = os.path.join(base, "checkpoints")
    run = Run(train_args(a, base), base, os.path.join(base, "run.log"))
    removed = run.wait_for(lambda: os.path.isdir(ckpt) and any(
        n.startswith("ckpt-") for n in os.listdir(ckpt)), timeout=600)
    if removed:
        shutil.rmtree(ckpt, ignore_errors=True)
    rc = run.finish()
    text = run.text
    vanish_case = {"removed": removed, "rc": rc, "remade": "vanished; making it again" in text,
                   "checkpoints_after": sorted(os.listdir(ckpt)) if os.path.isdir(ckpt) else []}
    log(f"folder removed mid-run: rc {rc}; remade {vanish_case['remade']}")
    return file_case, vanish_case


def main(argv=None) -> int:
    a = parse_args(argv)
    sys.path.insert(0, ROOT)
    from casting.quiet import import_tensorflow

    import_tensorflow()  # (the bench reads checkpoints with casting.training)
    rng = random.Random(a.seed)
    work = a.work or tempfile.mkdtemp(prefix="faults-")
    os.makedirs(work, exist_ok=True)
    say = lambda text: print(text, flush=True)  # noqa: E731
    from casting.data.synthetic import write_synthetic

    write_synthetic(os.path.join(work, "faulted", "data"), count=6, seed=3,
                    fmt="supervisely", size=64)
    for name in ("reference", "disk-full", "not-a-folder", "vanishes"):
        shutil.copytree(os.path.join(work, "faulted", "data"), os.path.join(work, name, "data"))
    started = time.time()

    ref_base = folder(work, "reference")
    ref = Run(train_args(a, ref_base), ref_base, os.path.join(ref_base, "run.log"))
    ref_rc = ref.finish()
    ref_s = time.monotonic() - ref.started
    say(f"reference: rc {ref_rc}, {ref_s:.0f}s, {a.epochs * a.steps_per_epoch} steps")

    # faults come up to two checkpoint intervals after a restart's first step
    window = 2 * a.checkpoint_every * step_seconds(ref.text)
    base, rows, final_rc, final_text = faulted(a, work, rng, say, window)
    diff = (max_difference(final_weights(ref_base), final_weights(base))
            if ref_rc == 0 and final_rc == 0 else float("nan"))
    kills = [r for r in rows if r.get("fault") == "kill" and "steps_lost" in r]
    terms = [r for r in rows if r.get("fault") == "term" and "steps_lost" in r]
    disk = disk_full(a, work, say)
    file_case, vanish_case = bad_folders(a, work, say)

    figures = {
        "kills": len(kills), "terms": len(terms),
        "kills_during_write": sum(r["at_write"] for r in kills),
        "restarts_resumed": sum(r.get("next_resumed_at") is not None for r in rows),
        "restarts_from_scratch": sum(r.get("next_resumed_at") is None for r in rows
                                     if "next_resumed_at" in r),
        "restarts_skipping_a_partial_or_damaged_checkpoint": sum(
            bool(r.get("next_skipped")) for r in rows),
        "kill_steps_lost_max": max((r["steps_lost"] for r in kills), default=0),
        "kill_steps_lost_mean": round(float(np.mean([r["steps_lost"] for r in kills])), 2)
        if kills else 0.0,
        "term_steps_lost_max": max((r["steps_lost"] for r in terms), default=0),
        "term_exit_s_max": max((r["exit_s"] for r in terms), default=0.0),
        "term_exit_s_mean": round(float(np.mean([r["exit_s"] for r in terms])), 1)
        if terms else 0.0,
        "final_rc": final_rc, "reference_rc": ref_rc,
        "final_weights_max_abs_diff": diff,
        "final_weights_equal": diff == 0.0,
        "disk_full_rc": disk["rc"],
        "disk_full_previous_checkpoint_intact": disk["previous_checkpoint_intact"],
        "file_as_folder_rc": file_case["rc"], "file_as_folder_trained": file_case["trained"],
        "vanished_folder_rc": vanish_case["rc"], "vanished_folder_remade": vanish_case["remade"],
        "wall_s": round(time.time() - started, 1),
    }
    say("")
    say("| fault | count | result |")
    say("|---|---|---|")
    say(f"| SIGKILL (of them during a checkpoint write) | {len(kills)} "
        f"({figures['kills_during_write']}) | steps lost max {figures['kill_steps_lost_max']}, "
        f"mean {figures['kill_steps_lost_mean']} (checkpoint every {a.checkpoint_every}) |")
    say(f"| SIGTERM | {len(terms)} | steps lost max {figures['term_steps_lost_max']}; exit "
        f"{figures['term_exit_s_mean']} s after the signal on average, "
        f"{figures['term_exit_s_max']} s at most |")
    say(f"| restarts | {len(rows)} | resumed {figures['restarts_resumed']}, from scratch "
        f"{figures['restarts_from_scratch']}, skipped a partial/damaged checkpoint "
        f"{figures['restarts_skipping_a_partial_or_damaged_checkpoint']} |")
    say(f"| final weights vs uninterrupted | 1 | max abs diff {diff:g} |")
    say(f"| disk full during a checkpoint | 1 | rc {disk['rc']}, earlier checkpoint intact: "
        f"{disk['previous_checkpoint_intact']} |")
    say(f"| checkpoint folder is a file | 1 | rc {file_case['rc']}, trained first: "
        f"{file_case['trained']} |")
    say(f"| checkpoint folder removed mid-run | 1 | rc {vanish_case['rc']}, made again: "
        f"{vanish_case['remade']} |")
    say("")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"figures": figures, "faults": rows, "disk_full": disk,
                       "file_as_folder": file_case, "vanished_folder": vanish_case,
                       "settings": vars(a)}, fh, indent=1, default=str)
    say("faults " + " ".join(f"{k}={v}" for k, v in figures.items()))
    if not a.keep and a.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
