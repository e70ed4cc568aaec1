"""SageMaker paths and environment, with local defaults so the same code runs anywhere.

Inside a SageMaker training container the toolkit (or the ``train`` launcher, which uses
it) sets ``SM_*`` variables; hosting and local runs set few or none.  ``SageMakerEnv``
reads what is there and falls back to the ``/opt/ml`` layout, or, where ``/opt/ml`` is
missing or not writable, to ``./output/...`` below the working directory.

Like ``sagemaker-training``, the base folder is ``$SAGEMAKER_BASE_DIR`` when that is set
(tests point it at a temporary ``<tmp>/opt/ml``), else ``/opt/ml``.

There is no SageMaker variable for checkpoints or TensorBoard: those default to
``<base>/checkpoints`` (the Estimator's ``checkpoint_local_path``) and
``<base>/output/tensorboard`` (the TensorBoard output config's local path).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from casting.files import write_atomic

BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"
DEFAULT_BASE_DIR = "/opt/ml"
# SageMaker reads at most 1024 characters of the failure file into FailureReason.
MAX_FAILURE_CHARS = 1024


def base_dir(environ: Mapping[str, str] | None = None) -> str:
    """The SageMaker base folder: ``$SAGEMAKER_BASE_DIR`` or ``/opt/ml``."""
    environ = os.environ if environ is None else environ
    return environ.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR


def _usable(path: str, base: str, is_file: bool = False) -> bool:
    """True if ``path`` can be written: a folder that exists and is writable, or does not
    exist yet while the base folder exists and is writable (so it can be created); with
    ``is_file``, a file whose folder is usable so (an existing file is replaced)."""
    if is_file:
        if os.path.isdir(path):
            return False
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isfile(path):  # e.g. an earlier run's failure file: it is replaced
            return os.access(folder, os.W_OK | os.X_OK)
        return _usable(folder, base)
    if os.path.isdir(path):
        return os.access(path, os.W_OK | os.X_OK)
    if os.path.exists(path):
        return False
    return os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK)


def _pick(sm_path: str, base: str, local_path: str, is_file: bool = False) -> str:
    return sm_path if _usable(sm_path, base, is_file) else os.path.abspath(local_path)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


@dataclass(frozen=True)
class SageMakerEnv:
    base_dir: str
    channels: dict[str, str]
    model_dir: str
    output_data_dir: str
    checkpoint_dir: str
    tensorboard_dir: str
    failure_file: str
    hosts: tuple[str, ...]
    current_host: str
    num_gpus: int
    num_cpus: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def is_chief(self) -> bool:
        """The first host in sorted order is the chief; a single host always is."""
        return len(self.hosts) <= 1 or self.current_host == sorted(self.hosts)[0]

    @property
    def is_distributed(self) -> bool:
        return len(self.hosts) > 1

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, local_root: str = "output"
    ) -> "SageMakerEnv":
        """Read the environment (``os.environ`` by default).

        ``local_root`` is the folder (relative to the working directory unless absolute)
        used for outputs when ``/opt/ml`` (or ``$SAGEMAKER_BASE_DIR``) cannot be used.
        """
        environ = os.environ if environ is None else environ
        base = base_dir(environ)
        local = os.path.abspath(local_root)

        channels = {
            key[len("SM_CHANNEL_"):].lower(): value
            for key, value in environ.items()
            if key.startswith("SM_CHANNEL_") and value
        }

        def path(var: str | None, sm_rel: str, local_rel: str, is_file: bool = False) -> str:
            if var and environ.get(var):
                return environ[var]
            return _pick(os.path.join(base, sm_rel), base, os.path.join(local, local_rel),
                         is_file)

        current_host = environ.get("SM_CURRENT_HOST") or "algo-1"
        hosts_text = environ.get("SM_HOSTS")
        try:
            hosts = tuple(json.loads(hosts_text)) if hosts_text else (current_host,)
        except (ValueError, TypeError):
            raise ValueError(f"SM_HOSTS is not a JSON list: {hosts_text!r}") from None
        if not hosts:
            hosts = (current_host,)

        hps_text = environ.get("SM_HPS")
        try:
            hps = json.loads(hps_text) if hps_text else {}
        except ValueError:
            raise ValueError(f"SM_HPS is not JSON: {hps_text!r}") from None

        return cls(
            base_dir=base,
            channels=channels,
            model_dir=path("SM_MODEL_DIR", "model", "model"),
            output_data_dir=path("SM_OUTPUT_DATA_DIR", "output/data", "data"),
            checkpoint_dir=path(None, "checkpoints", "checkpoints"),
            tensorboard_dir=path(None, "output/tensorboard", "tensorboard"),
            failure_file=path(None, "output/failure", "failure", is_file=True),
            hosts=hosts,
            current_host=current_host,
            num_gpus=_int(environ.get("SM_NUM_GPUS"), 0),
            num_cpus=_int(environ.get("SM_NUM_CPUS"), os.cpu_count() or 1),
            hyperparameters=dict(hps),
        )


def tf_config(env: SageMakerEnv, port: int = 8890,
              addresses: Mapping[str, str] | None = None) -> dict | None:
    """``TF_CONFIG`` for ``MultiWorkerMirroredStrategy``, or ``None`` on one host.

    Workers are the sorted hosts, so worker 0 is the chief (``env.is_chief``); each is
    reached at ``host:port`` unless ``addresses`` maps its name to another
    ``address:port`` (several workers on one machine, or hosts known by IP).
    Set it with ``os.environ["TF_CONFIG"] = json.dumps(cfg)`` before creating the strategy.
    """
    if len(env.hosts) <= 1:
        return None
    hosts = sorted(env.hosts)
    if env.current_host not in hosts:
        raise ValueError(f"current host {env.current_host!r} is not in hosts {hosts}")
    addresses = dict(addresses or {})
    missing = [h for h in hosts if addresses and h not in addresses]
    if missing:
        raise ValueError(f"no worker address for hosts {missing} in {addresses}")
    return {
        "cluster": {"worker": [addresses.get(host, f"{host}:{port}") for host in hosts]},
        "task": {"type": "worker", "index": hosts.index(env.current_host)},
    }


def failure_reason(exc_or_message: BaseException | str) -> str:
    """A short one-paragraph reason: ``ExcType: message`` for exceptions."""
    if isinstance(exc_or_message, BaseException):
        text = f"{type(exc_or_message).__name__}: {exc_or_message}".rstrip(": ")
    else:
        text = str(exc_or_message)
    text = text.strip() or "training failed"
    if len(text) > MAX_FAILURE_CHARS:
        text = text[: MAX_FAILURE_CHARS - 3] + "..."
    return text


def write_failure(path: str | os.PathLike, exc_or_message: BaseException | str) -> str:
    """Write a short failure reason to ``path`` atomically and return the text written."""
    path = os.fspath(path)
    text = failure_reason(exc_or_message)
    write_atomic(path, text + "\n")
    return text
