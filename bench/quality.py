#!/usr/bin/env python
"""The quality benchmark: train with an explicit step budget, score on unseen images.

    python bench/quality.py --train SPLIT/train --test SPLIT/test --steps 884 \\
        [--batch-size 2] [--image-size 512] [--seed 0] [--out FILE.json] [--work DIR] \\
        [--label NAME] [--peer | --peer-log FILE] [-- any train.py hyperparameters]

Runs ``train.py`` (same Python) with ``--train TRAIN --validation TEST``, the budget as
``--epochs E --steps-per-epoch S`` with E x S = steps (one epoch unless a passed-through
``--schedule``, ``--epochs`` or ``--steps-per-epoch`` asks for more; they must multiply to
the budget), ``--init-weights none``, no step checkpoints, one validation batch per epoch
and no SavedModel export (each unless passed through), and fresh model, output,
checkpoint and TensorBoard folders in a new folder under ``--work``. Everything after
``--`` goes to ``train.py`` unchanged.

Reads the run's ``evaluation.json`` (COCO segm/bbox on every test image) and its log, and
prints a table and one final ``quality key=value ...`` line, also written to ``--out``
(and to ``quality.json`` in the run folder). ``--peer`` then trains and scores
torchvision's Mask R-CNN on the same split for the same number of iterations
(``../shared/bench/peer_quality_torchvision.py`` in ``/tmp/venv-torch``, set up by
``bash ../shared/bench/setup_torch.sh``); ``--peer-log`` reads a saved peer stdout
instead. Either adds peer and ours/peer columns. See docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import quality_results as qr  # noqa: E402

PEER_SCRIPT = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench",
                                            "peer_quality_torchvision.py"))
PEER_PYTHON = "/tmp/venv-torch/bin/python"
PEER_BATCH = 2
PEER_IMAGE_SIZE = 512
# train.py options the benchmark sets itself (from its own flags or its run folder)
OWNED = {"train": "--train", "validation": "--test", "batch_size": "--batch-size",
         "image_size": "--image-size", "seed": "--seed", "model_dir": "--work",
         "output_data_dir": "--work", "checkpoint_dir": "--work", "tensorboard_dir": "--work"}
# train.py defaults changed for the benchmark unless passed through
DEFAULTS = {"init_weights": "none", "checkpoint_every_steps": "0", "validation_steps": "1",
            "saved_model": "False", "log_every_steps": "50"}


class BenchError(Exception):
    """A usage or run error; the message says what to do."""


# ---- arguments -----------------------------------------------------------------------------
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the benchmark's options, the train.py arguments after ``--``)."""
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    else:
        extra = []
    p = argparse.ArgumentParser(prog="bench/quality.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="training folder (e.g. SPLIT/train)")
    p.add_argument("--test", required=True, help="test folder, never trained on")
    p.add_argument("--steps", type=int, required=True, help="training steps (batches)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the results to this JSON file")
    p.add_argument("--work", help="the run folder goes under it (default: a new temp "
                   "folder)")
    p.add_argument("--label", default="ours", help="a name for this run in the output")
    peer = p.add_mutually_exclusive_group()
    peer.add_argument("--peer", action="store_true",
                      help="also train and score torchvision's Mask R-CNN (the peer)")
    peer.add_argument("--peer-log", help="compare with this saved peer stdout instead")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    return args, extra


def passthrough_options(extra: list[str]) -> dict[str, str]:
    """train.py arguments -> ``{name_with_underscores: raw value}`` (``--a-b V`` and
    ``--a_b=V`` alike). Every train.py option takes a value."""
    out, i = {}, 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or token == "--":
            raise BenchError(f"after '--': expected a train.py option, got {token!r}")
        if "=" in token:
            name, value = token[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra):
                raise BenchError(f"after '--': {token} needs a value")
            name, value = token[2:], extra[i + 1]
            i += 2
        out[name.replace("-", "_")] = value
    return out


def _structured(options: dict[str, str]) -> tuple[list, dict]:
    """(the schedule, the --config dict) of the pass-through, parsed as train.py does."""
    from casting.hparams import to_dict, to_schedule

    try:
        config = to_dict(options["config"]) if "config" in options else {}
        schedule = to_schedule(options["schedule"]) if "schedule" in options \
            else to_schedule(config.get("schedule", []))
    except ValueError as exc:
        raise BenchError(f"after '--': {exc}") from None
    return schedule, config


def check_owned(options: dict[str, str]) -> None:
    """Refuse pass-through options that the benchmark sets itself."""
    _, config = _structured(options)
    for name, flag in OWNED.items():
        if name in options or name in config:
            where = f"--{name.replace('_', '-')}" if name in options else f"--config {name}"
            raise BenchError(f"after '--': {where} is set by the benchmark; use "
                             f"bench/quality.py {flag} instead")


def plan_budget(steps: int, options: dict[str, str]) -> tuple[int, int]:
    """(epochs, steps per epoch) with epochs x steps per epoch == ``steps``.

    One epoch of ``steps`` steps, unless the pass-through fixes the epochs (a schedule's
    total, or ``--epochs``) or ``--steps-per-epoch``; what it fixes must fit the budget.
    """
    from casting.hparams import to_int

    schedule, config = _structured(options)

    def given(name):
        raw = options.get(name, config.get(name))
        if raw is None:
            return None
        try:
            return to_int(raw)
        except ValueError as exc:
            raise BenchError(f"after '--': --{name.replace('_', '-')}: {exc}") from None

    epochs, per_epoch = given("epochs"), given("steps_per_epoch")
    what = f"--epochs {epochs}"
    if schedule:
        try:
            epochs = sum(int(stage["epochs"]) for stage in schedule)
        except (KeyError, TypeError, ValueError):
            raise BenchError("after '--': every --schedule stage needs an integer "
                             "'epochs'") from None
        what = f"the schedule's {len(schedule)} stages ({epochs} epochs in all)"
    if epochs is not None and epochs < 1 or per_epoch is not None and per_epoch < 1:
        raise BenchError("after '--': epochs and steps per epoch must be >= 1")
    if epochs is None and per_epoch is None:
        return 1, steps
    if epochs is None:
        epochs, rest = divmod(steps, per_epoch)
        if rest or epochs == 0:
            raise BenchError(f"--steps {steps} is not a multiple of --steps-per-epoch "
                             f"{per_epoch}; change one of them")
        return epochs, per_epoch
    if per_epoch is None:
        per_epoch, rest = divmod(steps, epochs)
        if rest or per_epoch == 0:
            raise BenchError(f"--steps {steps} cannot be shared evenly among {what}; "
                             "choose --steps as a multiple of the epochs")
        return epochs, per_epoch
    if epochs * per_epoch != steps:
        raise BenchError(f"{what} x --steps-per-epoch {per_epoch} = {epochs * per_epoch} "
                         f"steps, not the budget --steps {steps}; make them agree")
    return epochs, per_epoch


def run_folders(run_dir: str) -> dict[str, str]:
    return {name: os.path.join(run_dir, name)
            for name in ("model", "output", "checkpoints", "tensorboard")}


def train_command(args: argparse.Namespace, extra: list[str], epochs: int, per_epoch: int,
                  folders: dict[str, str]) -> list[str]:
    """The train.py command line: the benchmark's options, its defaults (unless passed
    through), then the pass-through unchanged."""
    options = passthrough_options(extra)
    cmd = [sys.executable, os.path.join(ROOT, "train.py"),
           "--train", args.train, "--validation", args.test,
           "--epochs", str(epochs), "--steps-per-epoch", str(per_epoch),
           "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
           "--seed", str(args.seed),
           "--model-dir", folders["model"], "--output-data-dir", folders["output"],
           "--checkpoint-dir", folders["checkpoints"],
           "--tensorboard-dir", folders["tensorboard"]]
    for name, value in DEFAULTS.items():
        if name not in options:
            cmd += [f"--{name.replace('_', '-')}", value]
    return cmd + list(extra)


def peer_command(args: argparse.Namespace) -> list[str]:
    return [PEER_PYTHON, PEER_SCRIPT, "--train", args.train, "--test", args.test,
            "--max-iters", str(args.steps), "--budget-min", "100000", "--threads", "2",
            "--seed", str(args.seed)]


def check_peer_available() -> None:
    if not os.path.isfile(PEER_PYTHON):
        raise BenchError(f"--peer: {PEER_PYTHON} is missing; create it with "
                         "`bash ../shared/bench/setup_torch.sh` (or pass --peer-log FILE "
                         "with a saved peer run)")
    if not os.path.isfile(PEER_SCRIPT):
        raise BenchError(f"--peer: the peer script {PEER_SCRIPT} is missing")


# ---- running -------------------------------------------------------------------------------
def _child_env() -> dict[str, str]:
    """Our environment without SageMaker's variables (channels, hosts), which would
    otherwise steer train.py."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_logged(cmd: list[str], log_path: str, what: str) -> tuple[str, float]:
    """Run ``cmd``, echoing and saving its output; (the output, wall seconds)."""
    print(f"[quality] {what}: {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    lines = []
    with open(log_path, "w", encoding="utf-8") as log, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env=_child_env(), cwd=ROOT) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            lines.append(line)
        rc = proc.wait()
    wall = time.perf_counter() - started
    if rc != 0:
        tail = "".join(lines[-15:])
        raise BenchError(f"{what} failed (exit status {rc}) after {wall:.0f} s; the whole "
                         f"log is {log_path}; its end:\n{tail}")
    return "".join(lines), wall


def ours(args, extra, run_dir: str) -> dict:
    epochs, per_epoch = plan_budget(args.steps, passthrough_options(extra))
    folders = run_folders(run_dir)
    cmd = train_command(args, extra, epochs, per_epoch, folders)
    log_text, wall = run_logged(cmd, os.path.join(run_dir, "train.log"), "train.py")
    path = os.path.join(folders["output"], "evaluation.json")
    try:
        with open(path, encoding="utf-8") as fh:
            evaluation = json.load(fh)
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: cannot read train.py's evaluation ({exc}); see "
                         f"{run_dir}/train.log") from None
    result = qr.with_timing(qr.from_evaluation(evaluation), log_text, args.steps)
    result.update(wall_s=wall, epochs=epochs, steps_per_epoch=per_epoch,
                  classes=list(evaluation.get("class_names") or []),
                  last_epoch=last_history_row(os.path.join(folders["output"], "history.csv")))
    return result


def last_history_row(path: str) -> dict:
    """The last epoch of train.py's history.csv (losses, validation losses), as numbers."""
    import csv

    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return {}
    return {k: qr.number(v) for k, v in rows[-1].items()} if rows else {}


def peer(args, run_dir: str) -> dict:
    if args.peer_log:
        try:
            with open(args.peer_log, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise BenchError(f"--peer-log {args.peer_log}: cannot read it ({exc})") from None
        result = qr.parse_peer_log(text, args.peer_log)
        result["wall_s"] = qr.NAN
        return result
    log_path = os.path.join(run_dir, "peer.log")
    text, wall = run_logged(peer_command(args), log_path, "peer (torchvision)")
    result = qr.parse_peer_log(text, log_path)
    result["wall_s"] = wall
    return result


def warn_unlike(args) -> None:
    if args.batch_size != PEER_BATCH:
        print(f"[quality] warning: the peer trains at batch {PEER_BATCH}, ours at batch "
              f"{args.batch_size}: the same steps see different numbers of images",
              flush=True)
    if args.image_size != PEER_IMAGE_SIZE:
        print(f"[quality] warning: the peer trains and scores at {PEER_IMAGE_SIZE} px, "
              f"ours at {args.image_size} px", flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        args, extra = parse_args(list(sys.argv[1:] if argv is None else argv))
        options = passthrough_options(extra)
        check_owned(options)
        plan_budget(args.steps, options)  # fail before any training
        for flag, folder in (("--train", args.train), ("--test", args.test)):
            if not os.path.isdir(folder):
                raise BenchError(f"{flag} {folder}: no such folder")
        args.train, args.test = os.path.abspath(args.train), os.path.abspath(args.test)
        if args.peer:
            check_peer_available()
        if args.peer or args.peer_log:
            warn_unlike(args)
        if args.work:
            os.makedirs(args.work, exist_ok=True)
        run_dir = tempfile.mkdtemp(prefix=f"quality-{qr.key_name(args.label)}-",
                                   dir=args.work)
        print(f"[quality] run folder {run_dir}", flush=True)
        started = time.perf_counter()
        mine = ours(args, extra, run_dir)
        theirs = peer(args, run_dir) if args.peer or args.peer_log else None
        if theirs is not None and qr.finite(theirs["steps"]) and theirs["steps"] != args.steps:
            print(f"[quality] warning: the peer trained {int(theirs['steps'])} iterations, "
                  f"ours {args.steps} steps", flush=True)
    except (BenchError, ValueError) as exc:
        print(f"bench/quality.py: error: {exc}", file=sys.stderr)
        return 1
    settings = {"label": args.label, "steps": args.steps, "epochs": mine["epochs"],
                "steps_per_epoch": mine["steps_per_epoch"], "batch": args.batch_size,
                "image_size": args.image_size, "seed": args.seed}
    classes = mine["classes"] or None
    my_figures = qr.figures(mine, classes)
    peer_figures = qr.figures(theirs, classes) if theirs is not None else None
    line = qr.quality_line(settings, my_figures, peer_figures)
    report = {
        "settings": {**settings, "train": args.train, "test": args.test,
                     "train_py_args": extra, "run_dir": run_dir,
                     "peer": ("run" if args.peer else args.peer_log) if theirs else None,
                     "total_wall_s": time.perf_counter() - started},
        "ours": my_figures, "peer": peer_figures, "ours_last_epoch": mine["last_epoch"],
        "ours_over_peer": qr.ratios(my_figures, peer_figures) if peer_figures else None,
        "line": line,
    }
    for path in filter(None, (os.path.join(run_dir, "quality.json"), args.out)):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(qr.json_ready(report), fh, indent=2)
    print()
    print(qr.table(my_figures, peer_figures))
    print(f"[quality] results in {args.out or os.path.join(run_dir, 'quality.json')}")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
