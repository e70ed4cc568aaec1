"""The notebooks, executed with nbclient against a moto server on 127.0.0.1 (a subprocess
with moto's request recorder on), with the real SageMaker SDK inside the kernel.

Each notebook has a cell tagged `parameters`; the test adds a cell after it with its values
(papermill's convention), so `AWS_ENDPOINT_URL` points the notebook at the emulator.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import nbformat
import numpy as np
import pytest
import requests
from nbclient import NotebookClient

from casting.launch import CHECKPOINT_LOCAL_PATH, TENSORBOARD_LOCAL_PATH, encode_hyperparameters
from casting.metrics import METRIC_DEFINITIONS
from testkit import free_port

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
REGION = "eu-west-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/casting-maskrcnn:nbtest"


class Moto:
    def __init__(self, url: str, recording: Path):
        self.url, self.recording = url, recording

    def requests(self, target: str) -> list[dict]:
        """Recorded JSON bodies of SageMaker API calls named `target` (e.g. CreateModel)."""
        out = []
        for line in self.recording.read_text().splitlines():
            entry = json.loads(line)
            if entry["headers"].get("X-Amz-Target") != f"SageMaker.{target}":
                continue
            body = entry["body"]
            if entry["body_encoded"]:
                body = base64.b64decode(body).decode()
            out.append(json.loads(body))
        return out

    def client(self, name: str):
        return boto3.client(name, region_name=REGION, endpoint_url=self.url,
                            aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("moto")
    port = free_port()
    recording = tmp / "recording.jsonl"
    env = dict(os.environ, MOTO_ENABLE_RECORDING="True", MOTO_RECORDER_FILEPATH=str(recording))
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"{url}/moto-api/data.json", timeout=1)
            break
        except requests.ConnectionError:
            assert server.poll() is None and time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.2)
    config = tmp / "sagemaker-config.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                      "      TelemetryOptOut: true\n")
    kernel_env = {  # inherited by the kernels; AWS_ENDPOINT_URL comes from the parameter
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION, "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config),
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
        "AWS_CONFIG_FILE": str(tmp / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"),
    }
    saved = {k: os.environ.get(k) for k in kernel_env}
    os.environ.update(kernel_env)
    try:
        yield Moto(url, recording)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        server.wait(timeout=10)


def execute(name: str, params: dict, tmp_path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / f"executed-{name}")  # for reading after a failure
    return nb


def outputs_text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))


def test_notebooks_have_a_parameter_cell_and_no_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "AWS_ENDPOINT_URL = None" in tagged[0].source, path
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path
    assert len(list(NOTEBOOKS.glob("*.ipynb"))) == 3


HPS = {"epochs": 2, "steps-per-epoch": 5, "batch-size": 1, "image-size": 128,
       "learning-rate": 0.002, "schedule": [{"epochs": 1, "layers": "heads"},
                                            {"epochs": 1, "layers": "all"}],
       "class-names": ["holes", "chipping"], "seed": 3}


def test_notebook_2_train_spot(moto, tmp_path):
    bucket = "casting-nb2"
    nb = execute("2_train_spot.ipynb", {
        "AWS_ENDPOINT_URL": moto.url, "REGION": REGION, "BUCKET": bucket, "ROLE": ROLE,
        "IMAGE_URI": IMAGE, "RUN_NAME": "nbtest", "MAX_RUN": 3600, "MAX_WAIT": 5400,
        "HYPERPARAMETERS": HPS, "POLLS": 1, "POLL_SECONDS": 0,
    }, tmp_path)
    reqs = moto.requests("CreateTrainingJob")
    assert len(reqs) == 1, "the notebook starts exactly one job"
    req = reqs[0]
    algo = req["AlgorithmSpecification"]
    assert algo["TrainingImage"] == IMAGE
    assert algo["MetricDefinitions"] == METRIC_DEFINITIONS
    assert req["HyperParameters"] == encode_hyperparameters(HPS)
    assert json.loads(json.loads(req["HyperParameters"]["schedule"])) == HPS["schedule"]
    assert req["EnableManagedSpotTraining"] is True
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 5400}
    base = f"s3://{bucket}/casting"
    assert req["CheckpointConfig"] == {"S3Uri": f"{base}/checkpoints/nbtest",
                                       "LocalPath": CHECKPOINT_LOCAL_PATH}
    assert req["TensorBoardOutputConfig"] == {"S3OutputPath": f"{base}/tensorboard/nbtest",
                                              "LocalPath": TENSORBOARD_LOCAL_PATH}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
                for c in req["InputDataConfig"]}
    assert channels == {"train": f"{base}/data/train/", "validation": f"{base}/data/validation/"}
    assert req["RoleArn"] == ROLE and req["ResourceConfig"]["InstanceType"] == "ml.g5.2xlarge"
    text = outputs_text(nb)
    assert f"training job: {req['TrainingJobName']}" in text
    assert "resumes from " + f"{base}/checkpoints/nbtest" in text
    # The job exists in the emulator.
    desc = moto.client("sagemaker").describe_training_job(TrainingJobName=req["TrainingJobName"])
    assert desc["AlgorithmSpecification"]["TrainingImage"] == IMAGE


class StubServe(BaseHTTPRequestHandler):
    """Answers /invocations like serve.py (docs/serving.md) with one fixed detection: it
    stands in for the model server so the notebook's send-and-draw path runs offline."""

    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        StubServe.received.append((self.path, self.headers["Content-Type"], body[:3]))
        from pycocotools import mask as mask_util

        mask = np.zeros((256, 256), np.uint8)
        mask[40:60, 50:90] = 1
        rle = mask_util.encode(np.asfortranarray(mask))
        answer = {"width": 256, "height": 256, "detections": [{
            "class_id": 2, "class_name": "holes", "score": 0.91, "box": [50, 40, 90, 60],
            "bbox": [50, 40, 40, 20], "area": int(mask.sum()),
            "mask": {"size": [256, 256], "counts": rle["counts"].decode()}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_notebook_3_deploy_send_draw_transform(moto, tmp_path):
    bucket = "casting-nb3"
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("config.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    s3.put_object(Bucket=bucket, Key="casting/jobs/j/output/model.tar.gz", Body=buf.getvalue())
    model_data = f"s3://{bucket}/casting/jobs/j/output/model.tar.gz"

    server = ThreadingHTTPServer(("127.0.0.1", 0), StubServe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StubServe.received.clear()
    try:
        nb = execute("3_deploy_predict.ipynb", {
            "AWS_ENDPOINT_URL": moto.url, "REGION": REGION, "BUCKET": bucket, "ROLE": ROLE,
            "IMAGE_URI": IMAGE, "MODEL_DATA": model_data, "ENDPOINT_NAME": "casting-nbtest",
            "POLL_SECONDS": 1, "NUM_IMAGES": 2, "OUTPUT_DIR": str(tmp_path / "out"),
            "LOCAL_SERVE_URL": f"http://127.0.0.1:{server.server_address[1]}",
        }, tmp_path)
    finally:
        server.shutdown()

    models = moto.requests("CreateModel")  # deploy, then the transformer, create it
    model = models[0]
    assert len(models) in (1, 2) and all(m == model for m in models)
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == model_data
    assert model["ExecutionRoleArn"] == ROLE
    (config,) = moto.requests("CreateEndpointConfig")
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.xlarge"
    assert config["ProductionVariants"][0]["ModelName"] == model["ModelName"]
    (endpoint,) = moto.requests("CreateEndpoint")
    assert endpoint["EndpointName"] == "casting-nbtest"
    (transform,) = moto.requests("CreateTransformJob")
    assert transform["TransformInput"]["ContentType"] == "image/jpeg"
    assert transform["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == \
        f"s3://{bucket}/casting/batch/input/"
    assert transform["BatchStrategy"] == "SingleRecord"
    assert [r["EndpointName"] for r in moto.requests("DeleteEndpoint")] == ["casting-nbtest"]

    # Both images went to the local server as JPEG and were drawn.
    assert [(p.split("?")[0], t, b) for p, t, b in StubServe.received] == \
        [("/invocations", "image/jpeg", b"\xff\xd8\xff")] * 2
    drawn = sorted((tmp_path / "out").glob("pred_*.png"))
    assert len(drawn) == 2 and all(p.stat().st_size > 1000 for p in drawn)
    assert "holes" in outputs_text(nb)


def test_notebook_3_offline_skips_sending(moto, tmp_path):
    bucket = "casting-nb3b"
    moto.client("s3").create_bucket(Bucket=bucket,
                                    CreateBucketConfiguration={"LocationConstraint": REGION})
    nb = execute("3_deploy_predict.ipynb", {
        "AWS_ENDPOINT_URL": moto.url, "REGION": REGION, "BUCKET": bucket, "ROLE": ROLE,
        "IMAGE_URI": IMAGE, "MODEL_DATA": f"s3://{bucket}/m/model.tar.gz",
        "ENDPOINT_NAME": "casting-offline", "POLL_SECONDS": 1, "NUM_IMAGES": 1,
        "OUTPUT_DIR": str(tmp_path / "out"), "BATCH_TRANSFORM": False,
    }, tmp_path)
    assert "skipped synthetic_0.jpeg" in outputs_text(nb)
    assert not list((tmp_path / "out").glob("*.png"))


def test_notebook_1_prepare_data(moto, tmp_path):
    bucket = "casting-nb1"
    execute("1_prepare_data.ipynb", {
        "AWS_ENDPOINT_URL": moto.url, "REGION": REGION, "BUCKET": bucket,
        "WORK_DIR": str(tmp_path / "work"), "SYNTHETIC_COUNT": 6,
    }, tmp_path)
    s3 = moto.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="casting/data/")
            .get("Contents", [])]
    assert any(k.startswith("casting/data/train/") and k.endswith(".json") for k in keys), keys
    assert any(k.startswith("casting/data/validation/") for k in keys), keys
    assert any(k.lower().endswith((".jpeg", ".jpg", ".png")) for k in keys), keys
