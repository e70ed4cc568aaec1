"""casting.launch: build_estimator + Estimator.fit(wait=False) with the real SageMaker SDK
against a moto server on 127.0.0.1; the CreateTrainingJob request itself is asserted."""

from __future__ import annotations

import json
import os

import boto3
import pytest
from moto.server import ThreadedMotoServer

from casting.launch import (
    CHECKPOINT_LOCAL_PATH,
    TENSORBOARD_LOCAL_PATH,
    build_estimator,
    encode_hyperparameters,
    training_inputs,
)
from casting.metrics import METRIC_DEFINITIONS
from testkit import free_port

REGION = "us-east-1"
BUCKET = "casting-test-bucket"
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/casting-maskrcnn:v1"


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """A moto server, the AWS_* variables pointing at it and SDK telemetry off."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    config = tmp_path_factory.mktemp("smconfig") / "config.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                      "      TelemetryOptOut: true\n")
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config),
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture
def session(aws):
    import sagemaker

    sess = sagemaker.Session(boto_session=boto3.Session(region_name=REGION),
                             default_bucket=BUCKET)
    requests = []
    sess.sagemaker_client.meta.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob",
        lambda params, **kwargs: requests.append(json.loads(json.dumps(params))),
    )
    sess.captured = requests
    return sess


HPS = {
    "epochs": 12,
    "steps-per-epoch": 200,
    "batch_size": 2,
    "learning-rate": 0.01,
    "image-size": 512,
    "schedule": [{"epochs": 4, "layers": "heads"}, {"epochs": 8, "layers": "all"}],
    "init-weights": "imagenet",
    "checkpoint-every-steps": 100,
    "keep-checkpoints": 3,
    "val-fraction": 0.1,
    "class-names": ["holes", "chipping"],
    "config": {"detection_min_confidence": 0.5},
    "seed": 7,
    "augment": True,
    "unused": None,
}


def test_encode_hyperparameters():
    enc = encode_hyperparameters(HPS)
    assert enc["batch-size"] == "2" and "batch_size" not in enc and "unused" not in enc
    assert enc["learning-rate"] == "0.01" and enc["augment"] == "true"
    assert enc["init-weights"] == "imagenet"
    # Containers: JSON of JSON, so the toolkit's one json.loads leaves JSON text.
    assert json.loads(json.loads(enc["schedule"])) == HPS["schedule"]
    assert json.loads(json.loads(enc["class-names"])) == HPS["class-names"]
    assert json.loads(json.loads(enc["config"])) == HPS["config"]
    assert all(isinstance(v, str) for v in enc.values())
    with pytest.raises(ValueError):
        encode_hyperparameters({"sagemaker_program": "x.py"})
    with pytest.raises(TypeError):
        encode_hyperparameters({"x": object()})


def test_fit_sends_the_training_job_we_mean(session):
    est = build_estimator(
        image_uri=IMAGE, role=ROLE, s3_prefix=f"s3://{BUCKET}/casting", run_name="run-1",
        hyperparameters=HPS, instance_type="ml.g5.2xlarge", max_run=3600, max_wait=7200,
        environment={"CASTING_LOG_LEVEL": "debug"}, max_retry_attempts=2,
        sagemaker_session=session,
    )
    est.fit(training_inputs(f"s3://{BUCKET}/casting/data/train",
                            f"s3://{BUCKET}/casting/data/validation"), wait=False)
    assert len(session.captured) == 1
    req = session.captured[0]

    algo = req["AlgorithmSpecification"]
    assert algo["TrainingImage"] == IMAGE and algo["TrainingInputMode"] == "File"
    assert algo["MetricDefinitions"] == METRIC_DEFINITIONS
    assert req["RoleArn"] == ROLE
    assert req["HyperParameters"] == encode_hyperparameters(HPS)
    assert req["ResourceConfig"]["InstanceType"] == "ml.g5.2xlarge"
    assert req["ResourceConfig"]["InstanceCount"] == 1

    assert req["EnableManagedSpotTraining"] is True
    stop = req["StoppingCondition"]
    assert stop == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert stop["MaxWaitTimeInSeconds"] >= stop["MaxRuntimeInSeconds"]
    assert req["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/casting/checkpoints/run-1",
                                       "LocalPath": CHECKPOINT_LOCAL_PATH}
    assert req["TensorBoardOutputConfig"] == {
        "S3OutputPath": f"s3://{BUCKET}/casting/tensorboard/run-1",
        "LocalPath": TENSORBOARD_LOCAL_PATH,
    }
    assert req["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/casting/jobs"

    channels = {c["ChannelName"]: c for c in req["InputDataConfig"]}
    assert set(channels) == {"train", "validation"}
    for name, folder in (("train", "train"), ("validation", "validation")):
        s3 = channels[name]["DataSource"]["S3DataSource"]
        assert s3["S3Uri"] == f"s3://{BUCKET}/casting/data/{folder}"
        assert s3["S3DataDistributionType"] == "FullyReplicated"

    assert req["Environment"]["CASTING_LOG_LEVEL"] == "debug"
    assert req["Environment"]["PYTHONUNBUFFERED"] == "1"
    assert req["RetryStrategy"] == {"MaximumRetryAttempts": 2}
    assert "DebugHookConfig" not in req and "DebugRuleConfigurations" not in req
    assert req["ProfilerConfig"]["DisableProfiler"] is True

    # It reached the emulator as a job.
    job = session.sagemaker_client.describe_training_job(TrainingJobName=req["TrainingJobName"])
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert req["TrainingJobName"].startswith("casting-maskrcnn-")


def test_on_demand_multi_node(session):
    est = build_estimator(image_uri=IMAGE, role=ROLE, s3_prefix=f"s3://{BUCKET}/c/",
                          run_name="r2", use_spot_instances=False, instance_count=2,
                          max_run=600, sagemaker_session=session)
    est.fit(training_inputs(f"s3://{BUCKET}/c/data/train", weights=f"s3://{BUCKET}/c/w/"),
            wait=False)
    req = session.captured[-1]
    assert req.get("EnableManagedSpotTraining") in (None, False)
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 600}
    assert req["ResourceConfig"]["InstanceCount"] == 2
    assert [c["ChannelName"] for c in req["InputDataConfig"]] == ["train", "weights"]
    assert req["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/c/checkpoints/r2"


def test_spot_defaults_and_validation():
    with pytest.raises(ValueError, match="max_wait"):
        build_estimator(image_uri=IMAGE, role=ROLE, s3_prefix="s3://b/p", run_name="r",
                        max_run=3600, max_wait=1800)
    with pytest.raises(ValueError, match="s3_prefix"):
        build_estimator(image_uri=IMAGE, role=ROLE, s3_prefix="/local", run_name="r")
    with pytest.raises(ValueError, match="run_name"):
        build_estimator(image_uri=IMAGE, role=ROLE, s3_prefix="s3://b/p", run_name="a b")


def test_spot_max_wait_defaults_to_twice_max_run(session):
    est = build_estimator(image_uri=IMAGE, role=ROLE, s3_prefix=f"s3://{BUCKET}/d",
                          run_name="r3", max_run=1000, sagemaker_session=session)
    assert est.max_wait == 2000 and est.use_spot_instances
