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

import logging
import os
import sys

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
        from casting.training.job import run

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
