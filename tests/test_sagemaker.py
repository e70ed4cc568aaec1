"""casting.sagemaker, casting.metrics and the docker/train + docker/serve launchers.

The launchers run as real subprocesses with the real sagemaker-training toolkit in a
temporary <tmp>/opt/ml tree (SAGEMAKER_BASE_DIR), with stand-in programs that record
what they received.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from casting.launch import encode_hyperparameters
from casting.metrics import (
    EVAL_METRICS,
    METRIC_DEFINITIONS,
    TRAIN_METRICS,
    VAL_METRICS,
    format_eval_line,
    parse_metrics,
)
from casting.sagemaker import SageMakerEnv, tf_config, write_failure

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = ROOT / "docker"
VENV_BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------
# SageMakerEnv
# ---------------------------------------------------------------------------------------
def test_from_env_reads_sm_variables(tmp_path):
    environ = {
        "SM_CHANNEL_TRAIN": "/data/train",
        "SM_CHANNEL_VALIDATION": "/data/val",
        "SM_CHANNELS": '["train","validation"]',
        "SM_MODEL_DIR": "/m",
        "SM_OUTPUT_DATA_DIR": "/o",
        "SM_HOSTS": '["algo-2","algo-1"]',
        "SM_CURRENT_HOST": "algo-2",
        "SM_NUM_GPUS": "4",
        "SM_NUM_CPUS": "32",
        "SM_HPS": '{"epochs": 3, "schedule": "[]"}',
        "SAGEMAKER_BASE_DIR": str(tmp_path),
    }
    env = SageMakerEnv.from_env(environ)
    assert env.channels == {"train": "/data/train", "validation": "/data/val"}
    assert (env.model_dir, env.output_data_dir) == ("/m", "/o")
    assert env.hosts == ("algo-2", "algo-1") and env.current_host == "algo-2"
    assert (env.num_gpus, env.num_cpus) == (4, 32)
    assert env.hyperparameters == {"epochs": 3, "schedule": "[]"}
    assert env.is_chief is False
    # No SM variable for these: <base>/checkpoints etc. since the base is writable.
    assert env.checkpoint_dir == str(tmp_path / "checkpoints")
    assert env.tensorboard_dir == str(tmp_path / "output" / "tensorboard")
    assert env.failure_file == str(tmp_path / "output" / "failure")


def test_from_env_falls_back_to_local_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no" / "opt" / "ml"
    env = SageMakerEnv.from_env({"SAGEMAKER_BASE_DIR": str(missing)})
    assert env.model_dir == str(tmp_path / "output" / "model")
    assert env.output_data_dir == str(tmp_path / "output" / "data")
    assert env.checkpoint_dir == str(tmp_path / "output" / "checkpoints")
    assert env.tensorboard_dir == str(tmp_path / "output" / "tensorboard")
    assert env.failure_file == str(tmp_path / "output" / "failure")
    assert env.channels == {} and env.hosts == (env.current_host,) and env.is_chief


def test_from_env_unwritable_base_falls_back(tmp_path, monkeypatch):
    # A base that cannot hold folders, even for root (CI runs as root, and root writes into
    # read-only folders): a file where the folder should be.
    base = tmp_path / "opt" / "ml"
    base.parent.mkdir(parents=True)
    base.write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    env = SageMakerEnv.from_env({"SAGEMAKER_BASE_DIR": str(base)})
    assert env.model_dir == str(tmp_path / "output" / "model")
    assert env.checkpoint_dir == str(tmp_path / "output" / "checkpoints")
    assert env.failure_file == str(tmp_path / "output" / "failure")
    if os.geteuid() != 0:  # and, where the permission bits bind, a read-only base
        base.unlink()
        (base / "model").mkdir(parents=True)
        base.chmod(0o555)
        (base / "model").chmod(0o555)
        try:
            env = SageMakerEnv.from_env({"SAGEMAKER_BASE_DIR": str(base)})
        finally:
            (base / "model").chmod(0o755)
            base.chmod(0o755)
        assert env.model_dir == str(tmp_path / "output" / "model")


def test_failure_file_of_an_earlier_run_is_reused_not_a_fallback(tmp_path):
    base = tmp_path / "opt" / "ml"
    (base / "output").mkdir(parents=True)
    (base / "output" / "failure").write_text("an earlier run's reason")
    env = SageMakerEnv.from_env({"SAGEMAKER_BASE_DIR": str(base)})
    assert env.failure_file == str(base / "output" / "failure")


def test_from_env_unusable_path_falls_back(tmp_path, monkeypatch):
    base = tmp_path / "opt" / "ml"
    base.mkdir(parents=True)
    (base / "model").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    env = SageMakerEnv.from_env({"SAGEMAKER_BASE_DIR": str(base)})
    assert env.model_dir == str(tmp_path / "output" / "model")
    assert env.checkpoint_dir == str(base / "checkpoints")  # creatable under the base


def test_from_env_rejects_bad_hosts():
    with pytest.raises(ValueError, match="SM_HOSTS"):
        SageMakerEnv.from_env({"SM_HOSTS": "algo-1,algo-2"})


def test_tf_config_multi_host_and_single_host(tmp_path):
    base = {"SAGEMAKER_BASE_DIR": str(tmp_path), "SM_HOSTS": '["algo-1","algo-2","algo-3"]'}
    cfgs = [
        tf_config(SageMakerEnv.from_env({**base, "SM_CURRENT_HOST": host}))
        for host in ("algo-1", "algo-2", "algo-3")
    ]
    for index, cfg in enumerate(cfgs):
        assert cfg == {
            "cluster": {"worker": ["algo-1:8890", "algo-2:8890", "algo-3:8890"]},
            "task": {"type": "worker", "index": index},
        }
    chief = SageMakerEnv.from_env({**base, "SM_CURRENT_HOST": "algo-1"})
    assert chief.is_chief and tf_config(chief, port=2222)["cluster"]["worker"][0] == "algo-1:2222"
    single = SageMakerEnv.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path), "SM_HOSTS": '["algo-1"]'})
    assert tf_config(single) is None and single.is_chief


def test_write_failure_is_short_and_atomic(tmp_path):
    path = tmp_path / "output" / "failure"
    try:
        raise RuntimeError("no images in channel train")
    except RuntimeError as exc:
        text = write_failure(path, exc)
    assert path.read_text() == "RuntimeError: no images in channel train\n" == text + "\n"
    write_failure(path, "x" * 5000)
    assert len(path.read_text()) <= 1025
    assert [p.name for p in path.parent.iterdir()] == ["failure"]  # no temporary left


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------
KERAS_LOG_PROGRAM = textwrap.dedent(
    """
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, keras
    NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
             "mrcnn_mask_loss")
    BASE = {"rpn_class_loss": 3.4e-4, "rpn_bbox_loss": 0.25, "mrcnn_class_loss": 1.5,
            "mrcnn_bbox_loss": 2e-5, "mrcnn_mask_loss": 0.69}
    SCALES = [1.0, 0.1, 0.01]

    class Stand(keras.Model):
        # Logs the same metric names as the Mask R-CNN model, with known values.
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)
            self.scale = keras.Variable(1.0, trainable=False)
            self.trackers = {n: keras.metrics.Mean(name=n) for n in ("loss",) + NAMES}
        def call(self, x):
            return self.dense(x)
        @property
        def metrics(self):
            return list(self.trackers.values())
        def _step(self, factor):
            total = 0.0
            for n in NAMES:
                v = BASE[n] * self.scale * factor
                self.trackers[n].update_state(v)
                total = total + v
            self.trackers["loss"].update_state(total)
            return {n: t.result() for n, t in self.trackers.items()}
        def train_step(self, data):
            return self._step(1.0)
        def test_step(self, data):
            return self._step(2.0)

    class Scale(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.scale.assign(SCALES[epoch])

    m = Stand()
    m.compile(optimizer="sgd")
    x = np.zeros((4, 2), "float32")
    m.fit(x, x[:, :1], epochs=3, batch_size=2, verbose=2, validation_data=(x, x[:, :1]),
          callbacks=[Scale()])
    """
)
BASE_VALUES = {"rpn_class_loss": 3.4e-4, "rpn_bbox_loss": 0.25, "mrcnn_class_loss": 1.5,
               "mrcnn_bbox_loss": 2e-5, "mrcnn_mask_loss": 0.69}
SCALES = [1.0, 0.1, 0.01]


@pytest.fixture(scope="module")
def keras_log(tmp_path_factory):
    """stdout of a real Keras 3 fit(verbose=2) logging our metric names."""
    script = tmp_path_factory.mktemp("keraslog") / "fit.py"
    script.write_text(KERAS_LOG_PROGRAM)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout


def _close(a, b):
    # Keras prints 4 decimals, or 4 decimals of mantissa below 1e-3.
    return math.isclose(a, b, rel_tol=2e-4, abs_tol=6e-5)


def test_metric_definitions_are_valid_for_sagemaker():
    names = [d["Name"] for d in METRIC_DEFINITIONS]
    assert len(names) == len(set(names)) <= 40
    assert set(names) == set(TRAIN_METRICS + VAL_METRICS + EVAL_METRICS)
    for d in METRIC_DEFINITIONS:
        assert set(d) == {"Name", "Regex"} and d["Regex"].count("(") - d["Regex"].count("(?") == 1


def test_regexes_extract_keras_verbose2_values(keras_log):
    assert "3.4000e-04" in keras_log and "val_mrcnn_mask_loss" in keras_log  # realistic log
    found = parse_metrics(keras_log)
    for name, base in BASE_VALUES.items():
        for prefix, factor in (("", 1.0), ("val_", 2.0)):
            expected = [base * s * factor for s in SCALES]
            got = found[prefix + name]
            assert len(got) == 3 and all(map(_close, got, expected)), (prefix + name, got)
    total = sum(BASE_VALUES.values())
    assert all(map(_close, found["loss"], [total * s for s in SCALES])), found["loss"]
    assert all(map(_close, found["val_loss"], [2 * total * s for s in SCALES]))
    # Exponents are kept whole: 3.4e-4 * 0.01 is printed 3.4000e-06, not cut at "3.4000".
    assert found["rpn_class_loss"][2] == pytest.approx(3.4e-6, rel=1e-4)


def test_loss_regex_is_anchored():
    line = "2/2 - 1s - 9ms/step - mrcnn_mask_loss: 0.5000 - val_loss: 0.3000"
    found = parse_metrics(line)
    assert "loss" not in found
    assert found == {"mrcnn_mask_loss": [0.5], "val_loss": [0.3]}


def test_eval_line_round_trip():
    values = {"bbox_AP": 0.1234, "epoch": 3, "segm_AP": 4.5e-05, "segm_AP50": 0.30000001,
              "segm_AP_small": 0.0, "bbox_AP75": float("nan")}
    line = format_eval_line(values)
    assert line.startswith("[eval] epoch=3 bbox_AP=0.1234 segm_AP=4.5e-05 segm_AP50=0.3 ")
    found = parse_metrics("Epoch 3/10\n" + line + "\n")
    assert found == {"bbox_AP": [0.1234], "segm_AP": [4.5e-05], "segm_AP50": [0.3],
                     "segm_AP_small": [0.0]}  # nan is not reported
    # AP is not confused with AP50 / AP_small, whatever the order.
    found = parse_metrics("[eval] segm_AP50=0.5 segm_AP_small=0.25 segm_AP=0.125")
    assert found["segm_AP"] == [0.125] and found["segm_AP50"] == [0.5]
    assert parse_metrics("segm_AP=0.5") == {}  # only on [eval] lines
    with pytest.raises(ValueError):
        format_eval_line({"bad name": 1})


# ---------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------
RECORDER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    out = os.environ["RECORD_TO"]
    def on_term(signum, frame):
        open(out + ".sigterm", "w").write("SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    record = {"pid": os.getpid(), "argv": sys.argv, "cwd": os.getcwd(),
              "env": {k: v for k, v in os.environ.items()
                      if k.startswith(("SM_", "SAGEMAKER_", "PYTHON"))}}
    with open(out + ".tmp", "w") as fh:
        json.dump(record, fh)
    os.replace(out + ".tmp", out)
    if os.environ.get("WAIT_FOR_SIGTERM"):
        for _ in range(600):
            time.sleep(0.05)
        sys.exit(3)
    """
)


def make_opt_ml(base: Path, hyperparameters: dict[str, str], program: str = "train.py"):
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": "localhost", "hosts": ["localhost"],
                    "network_interface_name": "eth0"}))
    (config / "inputdataconfig.json").write_text(json.dumps({
        name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
               "RecordWrapperType": "None"} for name in ("train", "validation")}))
    for name in ("train", "validation"):
        (base / "input" / "data" / name).mkdir(parents=True)
    (base / "code").mkdir()
    (base / "code" / program).write_text(RECORDER)
    (base / "model").mkdir()
    (base / "output" / "data").mkdir(parents=True)


def launcher_env(base: Path, record: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SM_", "SAGEMAKER_", "TF_CONFIG"))}
    env.update(
        PATH=os.pathsep.join([str(DOCKER_DIR), str(VENV_BIN), env.get("PATH", "")]),
        SAGEMAKER_BASE_DIR=str(base),
        RECORD_TO=str(record),
        AWS_DEFAULT_REGION="us-east-1",
    )
    env.update(extra)
    return env


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"{path} not written"
        time.sleep(0.05)


def run_until_sigterm(launcher: str, base: Path, record: Path, seconds: float = 60) -> dict:
    """Start a launcher whose program records itself and waits; check the program runs in
    the launcher's own process (it exec'd, so a SIGTERM to it reaches the program), stop it
    with SIGTERM, expect exit 0. Returns what the program recorded."""
    proc = subprocess.Popen([launcher], env=launcher_env(base, record, WAIT_FOR_SIGTERM="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(record, proc, seconds=seconds)
        got = json.loads(record.read_text())
        assert got["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return got


def test_train_launcher_execs_program_with_toolkit_env_and_gets_sigterm(tmp_path):
    base = tmp_path / "opt" / "ml"
    hps = encode_hyperparameters({
        "epochs": 1, "steps-per-epoch": 2, "learning_rate": 0.001, "image-size": 64,
        "augment": False, "init-weights": "imagenet",
        "schedule": [{"epochs": 1, "layers": "heads"}, {"epochs": 2, "layers": "all"}],
        "class-map": {"holes": 1, "chipping": 2},
    })
    hps["sagemaker_region"] = '"us-east-1"'  # toolkit-only keys are dropped
    make_opt_ml(base, hps)
    record = tmp_path / "record.json"
    got = run_until_sigterm("train", base, record)
    assert Path(str(record) + ".sigterm").read_text() == "SIGTERM"

    argv = got["argv"]
    assert argv[0] == str(base / "code" / "train.py")
    args = dict(zip(argv[1::2], argv[2::2]))
    assert argv[1::2] == sorted(args)  # sorted --key value pairs, as the toolkit does
    assert args == {
        "--augment": "False",
        "--class-map": '{"chipping": 2, "holes": 1}',
        "--epochs": "1",
        "--image-size": "64",
        "--init-weights": "imagenet",
        "--learning-rate": "0.001",
        "--schedule": '[{"epochs": 1, "layers": "heads"}, {"epochs": 2, "layers": "all"}]',
        "--steps-per-epoch": "2",
    }
    assert json.loads(args["--schedule"])[1] == {"epochs": 2, "layers": "all"}
    assert got["cwd"] == str(base / "code")

    env = got["env"]
    assert env["SM_MODEL_DIR"] == str(base / "model")
    assert env["SM_CHANNEL_TRAIN"] == str(base / "input" / "data" / "train")
    assert json.loads(env["SM_HOSTS"]) == ["localhost"]
    assert env["SM_CURRENT_HOST"] == "localhost"
    assert json.loads(env["SM_HPS"])["epochs"] == 1
    assert json.loads(env["SM_TRAINING_ENV"])["user_entry_point"] == "train.py"
    # What train.py will see through casting.sagemaker.
    smenv = SageMakerEnv.from_env(env)
    assert smenv.channels == {"train": str(base / "input/data/train"),
                              "validation": str(base / "input/data/validation")}
    assert smenv.model_dir == str(base / "model") and smenv.is_chief
    assert smenv.output_data_dir == str(base / "output" / "data")
    assert smenv.checkpoint_dir == str(base / "checkpoints")
    assert not (base / "output" / "failure").exists()


def test_train_launcher_honours_sagemaker_program(tmp_path):
    base = tmp_path / "opt" / "ml"
    make_opt_ml(base, {"epochs": "1"}, program="other.py")
    record = tmp_path / "record.json"
    out = subprocess.run(["train"], env=launcher_env(base, record, SAGEMAKER_PROGRAM="other.py"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(record.read_text())
    assert got["argv"] == [str(base / "code" / "other.py"), "--epochs", "1"]


def test_train_launcher_writes_failure_before_exec(tmp_path):
    base = tmp_path / "opt" / "ml"
    make_opt_ml(base, {"epochs": "1"})
    out = subprocess.run(["train"], env=launcher_env(base, tmp_path / "r.json",
                                                     SAGEMAKER_PROGRAM="missing.py"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    failure = (base / "output" / "failure").read_text()
    assert "missing.py" in failure and "not found" in failure
    assert not (tmp_path / "r.json").exists()


def test_serve_launcher_execs_serve_py(tmp_path):
    base = tmp_path / "opt" / "ml"
    (base / "code").mkdir(parents=True)
    (base / "code" / "serve.py").write_text(RECORDER)
    record = tmp_path / "record.json"
    got = run_until_sigterm("serve", base, record, seconds=30)
    assert got["argv"] == [str(base / "code" / "serve.py")]
    assert got["env"]["SAGEMAKER_BIND_TO_PORT"] == "8080"
    assert got["env"]["SM_MODEL_DIR"] == str(base / "model")
    assert got["cwd"] == str(base / "code")
    # A port given by SageMaker is kept.
    record.unlink()
    out = subprocess.run(["serve"], env=launcher_env(base, record, SAGEMAKER_BIND_TO_PORT="9099"),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(record.read_text())["env"]["SAGEMAKER_BIND_TO_PORT"] == "9099"
