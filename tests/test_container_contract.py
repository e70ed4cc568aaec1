"""The image's layout rebuilt without Docker, then `train` and `serve` run as the image
runs them.

What the Dockerfile COPYs goes into a temporary <tmp>/opt/ml/code (and <tmp>/bin for the
launchers, first on PATH); the venv stands in for the pip-installed image. `train` runs with
SAGEMAKER_BASE_DIR=<tmp>/opt/ml, the toolkit's config files and tiny synthetic channels; it
must leave config.json and model.weights.h5 in SM_MODEL_DIR. `serve` then serves that model
on SAGEMAKER_BIND_TO_PORT: GET /ping, POST /invocations.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dockerfile_parse import DockerfileParser

from casting.launch import encode_hyperparameters
from casting.metrics import parse_metrics
from testkit import free_port

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow(seconds=30)  # the image-like training, then the server


def dockerfile_copies():
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    for ins in parser.structure:
        if ins["instruction"] == "COPY":
            words = [w for w in shlex.split(ins["value"]) if not w.startswith("--")]
            yield words[:-1], words[-1]


def build_layout(tmp: Path) -> tuple[Path, Path]:
    """<tmp>/opt/ml/code and <tmp>/bin as the Dockerfile fills /opt/ml/code and /usr/local/bin."""
    base, bindir = tmp / "opt" / "ml", tmp / "bin"
    missing = [s for srcs, _ in dockerfile_copies() for s in srcs if not (ROOT / s).exists()]
    assert not missing, f"the Dockerfile copies files that do not exist: {missing}"
    for srcs, dest in dockerfile_copies():
        if dest.startswith("/opt/ml/"):
            target = base / dest[len("/opt/ml/"):]
        elif dest == "/usr/local/bin/":
            target = bindir
        else:  # /tmp/requirements.txt: installed into the image = this venv
            continue
        for src in srcs:
            path = ROOT / src
            if path.is_dir():  # COPY dir/ dest/: the folder's contents
                shutil.copytree(path, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
    return base, bindir


def image_env(base: Path, bindir: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SM_", "SAGEMAKER_", "AWS_", "TF_CONFIG", "PYTHONPATH"))}
    env.update(PATH=os.pathsep.join([str(bindir), str(VENV_BIN), "/usr/bin", "/bin"]),
               SAGEMAKER_BASE_DIR=str(base), SAGEMAKER_PROGRAM="train.py",
               PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               AWS_DEFAULT_REGION="us-east-1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("image")
    base, bindir = build_layout(tmp)
    assert shutil.which("train", path=str(bindir)) == str(bindir / "train")
    assert not (base / "code" / "requirements.txt").exists()

    config = base / "input" / "config"
    config.mkdir(parents=True)
    hps = encode_hyperparameters({
        "epochs": 1, "steps-per-epoch": 2, "validation-steps": 1, "batch-size": 1,
        "image-size": 64, "init-weights": "none", "checkpoint-every-steps": 1,
        "eval-max-images": 2, "seed": 1,
        # A list: sent as JSON text, decoded once by the toolkit, parsed by train.py.
        "schedule": [{"epochs": 1, "layers": "all"}],
    })
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "localhost", "hosts": ["localhost"], "network_interface_name": "eth0"}))
    (config / "inputdataconfig.json").write_text(json.dumps({
        c: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None"} for c in ("train", "validation")}))
    for channel, seed, count in (("train", 0, 3), ("validation", 1, 2)):
        subprocess.run([sys.executable, "-m", "casting.data", "synth", "--out",
                        str(base / "input" / "data" / channel), "--count", str(count),
                        "--seed", str(seed), "--size", "64", "--format", "coco"],
                       cwd=ROOT, check=True, capture_output=True, timeout=120)
    for d in ("model", "output/data", "checkpoints"):
        (base / d).mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    out = subprocess.run(["train"], env=image_env(base, bindir), cwd=tmp, capture_output=True,
                         text=True, timeout=800)
    log = out.stdout + out.stderr
    (tmp / "train.log").write_text(log)
    return {"base": base, "bindir": bindir, "rc": out.returncode, "log": log,
            "seconds": time.monotonic() - started}


def test_train_runs_as_the_image_runs_it(trained):
    base = trained["base"]
    failure = base / "output" / "failure"
    assert trained["rc"] == 0, (failure.read_text() if failure.exists() else "") + \
        trained["log"][-4000:]
    assert not failure.exists()
    model = base / "model"
    assert (model / "config.json").is_file() and (model / "model.weights.h5").stat().st_size > 0
    config = json.loads((model / "config.json").read_text())
    assert config["image_size"] == 64
    # Its metric lines are what our metric definitions read.
    found = parse_metrics(trained["log"])
    assert "loss" in found and "mrcnn_mask_loss" in found, trained["log"][-3000:]
    assert any(list((base / "checkpoints").iterdir())), "no checkpoint written"


def test_serve_answers_ping_and_invocations(trained):
    if trained["rc"] != 0:
        pytest.skip("train failed; nothing to serve")
    base, bindir = trained["base"], trained["bindir"]
    port = free_port()
    proc = subprocess.Popen(["serve"], env=image_env(base, bindir, SAGEMAKER_BIND_TO_PORT=str(port),
                                                    SAGEMAKER_MODEL_SERVER_WORKERS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or busy loading the model
            assert proc.poll() is None, proc.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "serve never answered /ping with 200"
            time.sleep(1)
        image = next((base / "input" / "data" / "validation").rglob("*.jpg"))
        r = requests.post(f"{url}/invocations", data=image.read_bytes(), timeout=120,
                          headers={"Content-Type": "image/jpeg", "Accept": "application/json"})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["width"] == 64 and answer["height"] == 64
        assert isinstance(answer["detections"], list)
        r = requests.post(f"{url}/invocations", data=b"hello", timeout=30,
                          headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the serve launcher became serve.py (its group)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
