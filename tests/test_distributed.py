"""Multi-worker training: two SageMaker "instances" on this machine.

Each worker gets its own /opt/ml-like tree (config JSONs as SageMaker writes them, its own
copy of the data and the code) and is started through the image's `train` launcher
(docker/train), which runs the real sagemaker-training toolkit to build the environment
(SM_HOSTS, SM_CURRENT_HOST, ...) and execs train.py, so that SIGTERM reaches it. The only addition is CASTING_WORKER_ADDRESSES, which maps the host
names algo-1/algo-2 to loopback ports (there is no cluster DNS here). TensorFlow's
MultiWorkerMirroredStrategy then trains over gRPC on loopback, on the CPU.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from casting.distribute import ADDRESSES_ENV
from casting.launch import encode_hyperparameters
from testkit import ROOT, SMALL, Proc, _env, _synthetic, free_ports

HOSTS = ["algo-1", "algo-2"]
STEPS_PER_EPOCH = 4
EPOCHS = 2
DIGEST = re.compile(r"Weights digest \(worker (\d+), global step (\d+)\): ([0-9a-f]{64})")


def _instances(tmp_path, **extra_hps):
    """One /opt/ml tree per host, as SageMaker prepares each instance."""
    data = tmp_path / "data"
    _synthetic(data, count=7, seed=5)
    hps = {
        "init_weights": "none", "image_size": 64, "batch_size": 1, "epochs": EPOCHS,
        "steps_per_epoch": STEPS_PER_EPOCH, "checkpoint_every_steps": 2, "augment": False,
        "saved_model": False, "overlays": 1, "config": SMALL, **extra_hps,
    }
    bases = []
    for host in HOSTS:
        base = tmp_path / host / "opt" / "ml"
        config_dir = base / "input" / "config"
        config_dir.mkdir(parents=True)
        shutil.copytree(data, base / "input" / "data" / "train")
        (base / "code").mkdir()
        shutil.copy(ROOT / "train.py", base / "code" / "train.py")
        # as the SDK stores what casting.launch.build_estimator passes it
        stored = encode_hyperparameters(hps)
        stored["sagemaker_program"] = json.dumps("train.py")
        (config_dir / "hyperparameters.json").write_text(json.dumps(stored))
        (config_dir / "resourceconfig.json").write_text(json.dumps(
            {"current_host": host, "hosts": HOSTS, "network_interface_name": "eth0"}))
        (config_dir / "inputdataconfig.json").write_text(json.dumps(
            {"train": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}}))
        bases.append(base)
    return bases


def _start(bases):
    ports = free_ports(len(HOSTS))
    addresses = json.dumps({h: f"127.0.0.1:{p}" for h, p in zip(HOSTS, ports)})
    procs = []
    for base in bases:
        env = _env(base)
        env[ADDRESSES_ENV] = addresses
        procs.append(Proc([sys.executable, str(ROOT / "docker" / "train")], env, base))
    return procs


def _finish(procs, timeout=int(os.environ.get("DIST_TIMEOUT", 500))):
    """Exit codes (None: still running at the deadline, then killed). A worker is never
    left behind: it would wait for its peer forever."""
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.finish(timeout=max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    for p in procs:
        if p.p.poll() is None:
            p.p.kill()
    return codes


def _digests(text):
    return [(int(w), int(step), digest) for w, step, digest in DIGEST.findall(text)]


def _files(folder):
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _checkpoints(base):
    folder = base / "checkpoints"
    return sorted(n for n in os.listdir(folder) if n.startswith("ckpt-")) if folder.is_dir() \
        else []


def _s3_sync(chief, worker):
    """What SageMaker does at a restart: every instance gets the S3 checkpoints, which
    are the chief's (the only writer)."""
    shutil.rmtree(worker / "checkpoints", ignore_errors=True)
    shutil.copytree(chief / "checkpoints", worker / "checkpoints")


@pytest.mark.slow(seconds=120)
def test_multi_worker_job_stopped_killed_resumed_in_step_and_only_the_chief_writes(tmp_path):
    """One job's life: stopped by a signal to one worker, restarted and killed, restarted
    from an out-of-date copy; it ends with the replicas in step and only the chief's files.
    (One test, not two: each two-worker launch costs two TensorFlow start-ups.)"""
    chief, worker = _instances(tmp_path, saved_model=True)
    total = STEPS_PER_EPOCH * EPOCHS

    # 1. a stop signal reaching one worker only stops both after the same step
    procs = _start([chief, worker])
    assert procs[0].wait_for(lambda: _checkpoints(chief), timeout=400), procs[0].text[-3000:]
    procs[1].p.send_signal(signal.SIGTERM)
    codes = _finish(procs)
    logs = [p.text for p in procs]
    assert codes == [0, 0], "\n=====\n".join(log[-3000:] for log in logs)
    assert all("Stopped by signal" in log for log in logs), "\n=====\n".join(
        log[-3000:] for log in logs)
    (w0, s0, g0), (w1, s1, g1) = _digests(logs[0]) + _digests(logs[1])
    assert (w0, w1) == (0, 1) and s0 == s1 and g0 == g1 and s0 < total
    # global batch and per-worker shards of the 6 training images (1 of 7 held out)
    for log in logs:
        assert "batch 1 per replica x 2 replicas = 2" in log
    assert "Worker 0 of 2 (chief" in logs[0] and "Worker 1 of 2;" in logs[1]
    assert "reads 3 of the 6 training images" in logs[0]
    assert "reads 3 of the 6 training images" in logs[1]
    assert _checkpoints(chief)[-1] == f"ckpt-{s0:010d}"
    assert _checkpoints(worker) == []

    # 2. restart (SageMaker restores the S3 checkpoints on every instance); kill both
    #    with SIGKILL once the chief has written a newer checkpoint
    _s3_sync(chief, worker)
    synced = _checkpoints(worker)
    procs = _start([chief, worker])
    newer = f"ckpt-{s0 + 2 - s0 % 2:010d}"
    assert procs[0].wait_for(lambda: newer in _checkpoints(chief), timeout=400), \
        procs[0].text[-3000:]
    for p in procs:
        p.p.kill()
    _finish(procs, timeout=30)
    for log in (p.text for p in procs):
        assert "Resuming from checkpoint" in log and f"ckpt-{s0:010d}" in log
    killed_at = int(_checkpoints(chief)[-1][len("ckpt-"):])
    assert s0 < killed_at < total

    # 3. restart without syncing: this worker's copy is older than the chief's newest
    #    checkpoint; it follows the chief, and both finish with identical weights
    procs = _start([chief, worker])
    codes = _finish(procs)
    logs = [p.text for p in procs]
    assert codes == [0, 0], "\n=====\n".join(log[-3000:] for log in logs)
    assert f"ckpt-{killed_at:010d}" in logs[0]
    assert f"the chief's at {killed_at}" in logs[1]
    (_, e0, f0), (_, e1, f1) = _digests(logs[0]) + _digests(logs[1])
    assert e0 == e1 == total and f0 == f1  # the replicas end with identical weights

    # the chief writes the model, evaluation, history, TensorBoard and checkpoints ...
    assert (chief / "model" / "config.json").is_file()
    assert (chief / "model" / "model.weights.h5").is_file()
    assert (chief / "model" / "saved_model" / "saved_model.pb").is_file()
    evaluation = json.loads((chief / "output" / "data" / "evaluation.json").read_text())
    assert evaluation["global_step"] == total
    assert (chief / "output" / "data" / "history.csv").is_file()
    assert _files(chief / "output" / "tensorboard")
    assert _checkpoints(chief)[-1] == f"ckpt-{total:010d}"
    # ... the other worker writes none of them (its checkpoints are the copy synced in 2.)
    for sub in ("model", "output/data", "output/tensorboard"):
        assert _files(worker / sub) == [], sub
    assert _checkpoints(worker) == synced

    # the saved model is the replicas' common state
    from casting.distribute import weights_digest
    from casting.model import load_model_dir

    model = load_model_dir(str(chief / "model"))
    assert weights_digest(model.weights) == f0
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)
