"""train.py end to end: the real sagemaker-training toolkit, real signals, real files.

Small but real: Mask R-CNN with narrow heads on 64x64 synthetic castings, batch 1.
"""

import csv
import glob
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from casting.metrics import METRIC_DEFINITIONS, parse_metrics

from testkit import ROOT, SMALL, VENV_BIN, Proc, _env, _synthetic, h5_weights_finite  # noqa: F401,E501


def _train(args, tmp, base=None):
    return Proc([sys.executable, str(ROOT / "train.py"), *args], _env(base), tmp)


@pytest.mark.slow(seconds=55)
def test_toolkit_entry_point_trains_with_json_encoded_hyperparameters(tmp_path):
    base = tmp_path / "opt" / "ml"
    config_dir = base / "input" / "config"
    config_dir.mkdir(parents=True)
    _synthetic(base / "input" / "data" / "train")
    (base / "code").mkdir()
    shutil.copy(ROOT / "train.py", base / "code" / "train.py")
    hps = {  # as SageMaker stores them: strings, some JSON-encoded twice, a str(dict)
        "sagemaker_program": json.dumps("train.py"),
        "epochs": json.dumps(json.dumps("2")),
        "steps-per-epoch": "2",
        "batch_size": json.dumps(1),
        "image_size": "64",
        "learning-rate": json.dumps("0.005"),
        "augment": "False",
        "init_weights": json.dumps("none"),
        "checkpoint_every_steps": "0",
        "overlays": "2",
        "config": str(SMALL),
        "policy": json.dumps({"classes": {"holes": {"min_score": 0.6}}}),
    }
    (config_dir / "hyperparameters.json").write_text(json.dumps(hps))
    (config_dir / "resourceconfig.json").write_text(
        json.dumps({"current_host": "localhost", "hosts": ["localhost"]}))
    (config_dir / "inputdataconfig.json").write_text(json.dumps(
        {"train": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}}))

    proc = Proc([str(VENV_BIN / "train")], _env(base), tmp_path)
    rc = proc.finish(timeout=500)
    log = proc.text
    assert rc == 0, log[-4000:]
    # the model folder, in the format serve.py loads
    model_dir = base / "model"
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["image_size"] == 64 and saved["fpn_channels"] == 32
    assert saved["learning_rate"] == 0.005 and saved["augment"] is False and saved["epochs"] == 2
    assert saved["class_names"] == ["disk", "holes", "chipping", "deburring"]
    assert (model_dir / "model.weights.h5").stat().st_size > 0
    assert (model_dir / "saved_model" / "saved_model.pb").is_file()
    # checkpoints (one per epoch end here)
    ckpts = sorted(p.name for p in (base / "checkpoints").iterdir())
    assert ckpts == ["ckpt-0000000002", "ckpt-0000000004"]
    # evaluation, history, overlays, TensorBoard
    out = base / "output" / "data"
    evaluation = json.loads((out / "evaluation.json").read_text())
    for kind in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "AP_small", "per_class"):
            assert key in evaluation[kind]
        assert set(evaluation[kind]["per_class"]) == set(saved["class_names"])
    assert evaluation["epochs"] == 2 and evaluation["global_step"] == 4
    # the acceptance policy travels with the model; part-level figures are evaluated with it
    assert json.loads((model_dir / "policy.json").read_text()) == {
        "classes": {"holes": {"min_score": 0.6}}}
    parts = evaluation["parts"]
    assert parts["num_parts"] == evaluation["num_images"]
    assert parts["num_defective"] + parts["num_good"] == parts["num_parts"]
    assert len(parts["curve"]) == 19 and "catch_rate" in parts
    with open(out / "history.csv") as fh:
        history = list(csv.DictReader(fh))
    assert [row["epoch"] for row in history] == ["1", "2"]
    assert len(glob.glob(str(out / "overlays" / "*.png"))) >= 1
    assert glob.glob(str(base / "output" / "tensorboard" / "train" / "events.out.tfevents.*"))
    assert not (base / "output" / "failure").exists()
    # logs: verbose=2 lines and one [eval] line, read back with the metric definitions
    assert "\r" not in log
    metrics = parse_metrics(log, METRIC_DEFINITIONS)
    assert metrics["loss"] == pytest.approx([float(r["loss"]) for r in history], rel=1e-3)
    assert metrics["val_loss"] == pytest.approx([float(r["val_loss"]) for r in history],
                                                rel=1e-3)
    assert metrics["segm_AP"] == [pytest.approx(evaluation["segm"]["AP"], abs=1e-5)]
    assert metrics["bbox_AP50"] == [pytest.approx(evaluation["bbox"]["AP50"], abs=1e-5)]
    # the last line: each class's segm AP50, as in evaluation.json
    per_class = evaluation["segm"]["per_class_AP50"]
    want = ", ".join(f"{name} {'n/a' if v is None else f'{v:.2f}'}"
                     for name, v in per_class.items())
    assert (f"segm AP50 per class on the {evaluation['num_images']} evaluated images: {want}"
            in log), log[-1000:]


def test_broken_dataset_and_bad_hyperparameter_fail_with_a_reason(tmp_path):
    data = Path(_synthetic(tmp_path / "data", count=3))
    ann = sorted(data.rglob("ann/*.json"))[0]
    ann.write_text("{not json")
    base = tmp_path / "opt" / "ml"
    base.mkdir(parents=True)
    proc = _train(["--train", str(data), "--image-size", "64", "--init-weights", "none"],
                  tmp_path, base)
    assert proc.finish(timeout=300) == 1
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("DatasetError") and ann.name in failure
    assert ann.name in proc.text  # the whole check report is in the log
    text = proc.text
    assert "Traceback" not in text and "--on-data-error skip" in text  # what to do
    assert text.count("1 problem (") == 1  # the report once, not twice
    assert not (base / "model").exists() or not os.listdir(base / "model")
    assert not glob.glob(str(base / "checkpoints" / "ckpt-*"))

    # with --output-data-dir the failure file goes beside it
    elsewhere = tmp_path / "elsewhere" / "data"
    proc = _train(["--train", str(tmp_path / "no-such-folder"), "--output-data-dir",
                   str(elsewhere)], tmp_path, base)
    assert proc.finish(timeout=300) == 1
    assert "no-such-folder" in (tmp_path / "elsewhere" / "failure").read_text()

    (base / "output" / "failure").unlink()
    proc = _train(["--epochz", "3"], tmp_path, base)
    assert proc.finish(timeout=120) == 1
    failure = (base / "output" / "failure").read_text()
    assert "--epochz" in failure and "steps_per_epoch" in failure


def test_diverging_run_stops_at_the_nan_step_and_writes_nothing_from_it(tmp_path):
    base = tmp_path / "opt" / "ml"
    base.mkdir(parents=True)
    proc = _train(["--image-size", "64", "--batch-size", "1", "--epochs", "2",
                   "--steps-per-epoch", "4", "--checkpoint-every-steps", "1",
                   "--init-weights", "none", "--synthetic-images", "4", "--learning-rate",
                   "1000", "--warmup-steps", "0", "--gradient-clip-norm", "0",
                   "--saved-model", "False", "--overlays", "0", "--log-every-steps", "1",
                   "--config", json.dumps(SMALL)], tmp_path, base)
    rc = proc.finish(timeout=400)
    log = proc.text
    assert rc == 1, log[-3000:]
    for noise in ("cuInit", "cudart_stub", "absl::InitializeLog"):  # CPU start-up noise
        assert noise not in log, noise  # (the toolkit's own launcher imports TF unfiltered)
    steps = [ln for ln in log.splitlines() if ln.startswith("step 1/8 (epoch 1/2, 1/4) ")]
    assert steps and "s/step " in steps[0] and " loss=" in steps[0], log[-3000:]  # progress
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("NonFiniteError: non-finite training values at epoch 1, step")
    assert "loss=nan" in failure or "loss=inf" in failure, failure
    assert "--learning-rate" in failure and "--gradient-clip-norm" in failure
    assert "Training stopped: non-finite" in log and "Traceback" not in log
    assert not (base / "model" / "model.weights.h5").exists()
    assert not (base / "output" / "data" / "evaluation.json").exists()
    ckpts = sorted(glob.glob(str(base / "checkpoints" / "ckpt-*")))
    stop_step = int(failure.split("(global step ")[1].split(")")[0])
    assert [int(p.rsplit("-", 1)[1]) for p in ckpts] == list(range(1, stop_step))
    if ckpts:
        assert f"the newest checkpoint, {ckpts[-1]}, holds the last finite weights" in failure
    for path in ckpts:  # every checkpoint on disk is finite
        assert h5_weights_finite(Path(path) / "model.weights.h5"), path


@pytest.mark.slow(seconds=105)
def test_a_run_on_other_data_refuses_the_old_checkpoints_then_starts_over(tmp_path):
    base = tmp_path / "opt" / "ml"
    base.mkdir(parents=True)
    small = ["--image-size", "64", "--batch-size", "1", "--epochs", "1", "--steps-per-epoch",
             "2", "--init-weights", "none", "--saved-model", "False", "--overlays", "0",
             "--config", json.dumps(SMALL)]
    proc = _train(small + ["--synthetic-images", "4"], tmp_path, base)
    assert proc.finish(timeout=400) == 0, proc.text[-3000:]
    model_file = base / "model" / "model.weights.h5"
    first_model = model_file.read_bytes()

    other = Path(_synthetic(tmp_path / "other", count=5, seed=9))
    proc = _train(small + ["--train", str(other)], tmp_path, base)
    assert proc.finish(timeout=400) == 1, proc.text[-3000:]
    log = proc.text
    assert "belongs to another run" in log and "other training data" in log
    assert "3 training images from synthetic" in log and f"from {other}" in log
    assert "--checkpoint-dir" in log and "--resume False" in log
    assert "Traceback" not in log and "Stage 1/" not in log  # refused before training
    assert model_file.read_bytes() == first_model  # the old model is untouched
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("ResumeError: the checkpoint ")

    proc = _train(small + ["--train", str(other), "--resume", "False"], tmp_path, base)
    assert proc.finish(timeout=400) == 0, proc.text[-3000:]
    moved = glob.glob(str(base / "checkpoints" / "superseded-*" / "ckpt-0000000002"))
    assert len(moved) == 1 and "moved the earlier checkpoints into" in proc.text
    assert [Path(p).name for p in glob.glob(str(base / "checkpoints" / "ckpt-*"))] == [
        "ckpt-0000000002"]
    assert _ckpt_state(base / "checkpoints" / "ckpt-0000000002")["extra"]["data"]["source"] \
        == str(other)
    assert not (base / "output" / "failure").exists()  # the earlier failure is gone

    # a longer run with shorter epochs resumes at the same global step
    proc = _train(small + ["--train", str(other), "--epochs", "3", "--steps-per-epoch", "1"],
                  tmp_path, base)
    assert proc.finish(timeout=400) == 0, proc.text[-3000:]
    log = proc.text
    assert "steps-per-epoch changed from 2 to 1: the checkpoint's 2 steps count as 2 epochs" in log
    assert "the optimizer has taken" not in log and "optimizer step" not in log
    assert _ckpt_state(base / "checkpoints" / "ckpt-0000000003")["global_step"] == 3


def _ckpt_state(path):
    return json.loads((Path(path) / "state.json").read_text())


@pytest.mark.slow(seconds=95)
def test_sigkill_while_saving_then_sigterm_mid_epoch_then_resume_to_the_end(tmp_path):
    base = tmp_path / "opt" / "ml"
    base.mkdir(parents=True)
    ckpt_dir = base / "checkpoints"
    spe = 3
    args = ["--image-size", "64", "--batch-size", "1", "--epochs", "2", "--steps-per-epoch",
            str(spe), "--checkpoint-every-steps", "1", "--init-weights", "none", "--synthetic-images",
            "5", "--augment", "False", "--saved-model", "False", "--overlays", "0",
            "--config", json.dumps(SMALL)]

    # 1. SIGKILL while the second checkpoint is being written
    proc = _train(args, tmp_path, base)

    def writing_second():
        if not ckpt_dir.is_dir():
            return False
        names = os.listdir(ckpt_dir)
        return "ckpt-0000000001" in names and any(n.startswith(".tmp-ckpt-") for n in names)

    assert proc.wait_for(writing_second, timeout=400), proc.text[-3000:]
    proc.p.send_signal(signal.SIGKILL)
    assert proc.finish() == -signal.SIGKILL
    partial = [n for n in os.listdir(ckpt_dir) if n.startswith(".tmp-ckpt-")]
    assert partial, "the kill should have interrupted a checkpoint write"
    assert "ckpt-0000000002" not in os.listdir(ckpt_dir)

    # 2. restart: skips the partial write, resumes from ckpt 1; SIGTERM in epoch 2
    proc = _train(args, tmp_path, base)
    assert proc.wait_for(lambda: "global step 4" in proc.text, timeout=400), proc.text[-3000:]
    proc.p.send_signal(signal.SIGTERM)
    rc = proc.finish()
    log = proc.text
    assert rc == 0, log[-3000:]
    assert f"skipping partial checkpoint write {ckpt_dir / partial[0]}" in log
    assert f"Resuming from checkpoint {ckpt_dir / 'ckpt-0000000001'}: epoch 1, step 1" in log
    assert "Received signal 15" in log and "Checkpoint (stop signal)" in log
    newest = sorted(glob.glob(str(ckpt_dir / "ckpt-*")))[-1]
    state = _ckpt_state(newest)
    assert state["epoch"] == 1 and 1 <= state["step_in_epoch"] < spe  # mid epoch 2
    assert state["global_step"] == spe + state["step_in_epoch"]
    assert [row["epoch"] for row in state["history"]] == [1]
    assert len(glob.glob(str(ckpt_dir / "ckpt-*"))) == 3  # keep_checkpoints default
    assert not (base / "model" / "model.weights.h5").exists()
    assert not [n for n in os.listdir(ckpt_dir) if n.startswith(".tmp-")]

    # 3. restart: resumes at that epoch and step, runs only the rest, finishes 2 epochs
    proc = _train(args, tmp_path, base)
    rc = proc.finish(timeout=500)
    log = proc.text
    assert rc == 0, log[-3000:]
    step = state["step_in_epoch"]
    assert f"epoch 2, step {step} of {spe}" in log
    assert f"Resuming epoch 2 at step {step + 1} ({spe - step} steps left)" in log
    assert f"{spe - step}/{spe - step} - " in log  # the short first fit
    assert "Epoch 1/2" not in log  # not from scratch
    final = _ckpt_state(sorted(glob.glob(str(ckpt_dir / "ckpt-*")))[-1])
    assert (final["epoch"], final["step_in_epoch"], final["global_step"]) == (2, 0, 2 * spe)
    evaluation = json.loads((base / "output" / "data" / "evaluation.json").read_text())
    assert evaluation["epochs"] == 2 and evaluation["global_step"] == 2 * spe
    with open(base / "output" / "data" / "history.csv") as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["1", "2"]
    assert (base / "model" / "model.weights.h5").is_file()
    assert "[eval] epoch=2 " in log
