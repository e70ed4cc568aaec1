"""Launch training on SageMaker (SDK v2: ``sagemaker>=2.250,<3``; v3 removed Estimator).

    from casting.launch import build_estimator, training_inputs
    est = build_estimator(image_uri=..., role=..., s3_prefix="s3://bucket/casting",
                          run_name="r1", hyperparameters={"epochs": 20, "image-size": 512})
    est.fit(training_inputs("s3://bucket/casting/data/train",
                            "s3://bucket/casting/data/val"), wait=False)

Spot training: ``use_spot_instances`` with ``max_wait >= max_run``; checkpoints in
``checkpoint_local_path=/opt/ml/checkpoints`` are mirrored to ``checkpoint_s3_uri`` and
copied back in when SageMaker restarts the job after an interruption, so ``train.py``
resumes from them.  The S3 layout below ``s3_prefix`` is::

    <s3_prefix>/jobs/<job>/output/model.tar.gz     (output_path)
    <s3_prefix>/checkpoints/<run_name>/             (checkpoint_s3_uri)
    <s3_prefix>/tensorboard/<run_name>/             (TensorBoard event files)
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from casting.metrics import METRIC_DEFINITIONS

CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"
DEFAULT_INSTANCE_TYPE = "ml.g5.2xlarge"
DEFAULT_ENVIRONMENT = {"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "1"}
CHANNELS = ("train", "validation", "weights")

_RUN_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})$")


def encode_hyperparameters(hyperparameters: Mapping[str, Any] | None) -> dict[str, str]:
    """Encode hyperparameters so that ``train.py`` receives ``--name value`` as intended.

    * Names: ``_`` becomes ``-`` (``steps_per_epoch`` -> ``steps-per-epoch``).
    * Strings are sent as they are; ``None`` values are dropped.
    * Numbers and booleans are JSON-encoded (``2``, ``0.001``, ``true``); the toolkit
      JSON-decodes them and passes ``str()`` of the result (``2``, ``0.001``, ``True``).
    * Lists and dicts (``schedule``, ``class-names``, ``config``) are JSON-encoded *twice*: the toolkit
      decodes once and would otherwise pass a Python repr (lists) or ``k=v,k=v`` (dicts);
      this way ``train.py`` receives valid JSON text.
    """
    out: dict[str, str] = {}
    for key, value in (hyperparameters or {}).items():
        name = str(key).replace("_", "-")
        if name.startswith("sagemaker-") or name.startswith("sagemaker_"):
            raise ValueError(f"hyperparameter {key!r}: sagemaker_* names are reserved")
        if value is None:
            continue
        if isinstance(value, str):
            out[name] = value
        elif isinstance(value, (bool, int, float)):
            out[name] = json.dumps(value)
        elif isinstance(value, (list, tuple, dict)):
            out[name] = json.dumps(json.dumps(value, sort_keys=True))
        else:
            raise TypeError(f"hyperparameter {key!r}: cannot encode {type(value).__name__}")
    return out


def training_inputs(
    train: str,
    validation: str | None = None,
    weights: str | None = None,
    *,
    input_mode: str = "File",
) -> dict[str, Any]:
    """Channels as ``TrainingInput``s: ``train`` (and ``validation``), each an S3 prefix
    holding a COCO or Supervisely export; optionally ``weights`` (a model folder or .h5 to
    start from; train.py uses it as --init-weights).  Without ``validation`` train.py
    holds out --val-fraction of the training images."""
    from sagemaker.inputs import TrainingInput

    channels = {"train": train}
    if validation:
        channels["validation"] = validation
    if weights:
        channels["weights"] = weights
    return {
        name: TrainingInput(uri, distribution="FullyReplicated", input_mode=input_mode)
        for name, uri in channels.items()
    }


def build_estimator(
    *,
    image_uri: str,
    role: str,
    s3_prefix: str,
    run_name: str,
    hyperparameters: Mapping[str, Any] | None = None,
    instance_type: str = DEFAULT_INSTANCE_TYPE,
    instance_count: int = 1,
    use_spot_instances: bool = True,
    max_run: int = 24 * 3600,
    max_wait: int | None = None,
    checkpoint_s3_uri: str | None = None,
    tensorboard_s3_uri: str | None = None,
    output_path: str | None = None,
    environment: Mapping[str, str] | None = None,
    max_retry_attempts: int = 3,
    volume_size: int = 50,
    base_job_name: str = "casting-maskrcnn",
    tags: list[dict[str, str]] | None = None,
    sagemaker_session: Any = None,
):
    """A ``sagemaker.estimator.Estimator`` for the casting image.

    ``max_wait`` defaults to twice ``max_run`` on spot and must be ``>= max_run``.
    ``run_name`` names the checkpoint and TensorBoard folders: keep it to resume a run in a
    new job from its checkpoints, change it to start afresh.
    """
    from sagemaker.debugger import TensorBoardOutputConfig
    from sagemaker.estimator import Estimator

    if not s3_prefix.startswith("s3://"):
        raise ValueError(f"s3_prefix must be an s3:// URI, not {s3_prefix!r}")
    if not _RUN_NAME.match(run_name):
        raise ValueError(f"run_name must be 1-63 letters, digits or '-': {run_name!r}")
    if instance_count < 1:
        raise ValueError("instance_count must be >= 1")
    prefix = s3_prefix.rstrip("/")
    if use_spot_instances:
        max_wait = 2 * max_run if max_wait is None else max_wait
        if max_wait < max_run:
            raise ValueError(f"max_wait ({max_wait}) must be >= max_run ({max_run})")
    elif max_wait is not None:
        raise ValueError("max_wait is only for spot training (use_spot_instances=True)")

    env = dict(DEFAULT_ENVIRONMENT)
    env.update(environment or {})

    return Estimator(
        image_uri=image_uri,
        role=role,
        instance_count=instance_count,
        instance_type=instance_type,
        volume_size=volume_size,
        max_run=max_run,
        use_spot_instances=use_spot_instances,
        max_wait=max_wait,
        checkpoint_s3_uri=checkpoint_s3_uri or f"{prefix}/checkpoints/{run_name}",
        checkpoint_local_path=CHECKPOINT_LOCAL_PATH,
        output_path=output_path or f"{prefix}/jobs",
        base_job_name=base_job_name,
        hyperparameters=encode_hyperparameters(hyperparameters),
        metric_definitions=[dict(d) for d in METRIC_DEFINITIONS],
        tensorboard_output_config=TensorBoardOutputConfig(
            s3_output_path=tensorboard_s3_uri or f"{prefix}/tensorboard/{run_name}",
            container_local_output_path=TENSORBOARD_LOCAL_PATH,
        ),
        environment=env,
        max_retry_attempts=max_retry_attempts,
        debugger_hook_config=False,
        disable_profiler=True,
        tags=tags,
        sagemaker_session=sagemaker_session,
    )
