"""Training on several GPUs and several instances with ``tf.distribute``.

* :func:`select_strategy` - the strategy for this job: ``MultiWorkerMirroredStrategy``
  across SageMaker hosts (``TF_CONFIG`` built from ``SM_HOSTS`` / ``SM_CURRENT_HOST``),
  ``MirroredStrategy`` across the GPUs of one host, else the default strategy.
* :class:`Replicas` - how many replicas and workers, which worker this is, who is chief.
* :func:`distributed_dataset` - one input pipeline per worker, built from the
  ``tf.distribute.InputContext`` so that each worker reads its own shard of the files.
* :func:`broadcast_from_chief` - make every replica's copy of some variables equal to the
  chief's (after loading weights, restoring a checkpoint or calibrating BatchNorm, which
  each worker does on its own).
* :func:`any_worker` - an all-reduce of a boolean, so that a stop signal seen by one
  worker stops all of them at the same step.
* :func:`weights_digest` - a SHA-256 of variable values, to check that replicas agree.

With one worker and one device every helper is a no-op, so single-process training runs
exactly as without this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger("casting.distribute")

# Environment overrides for running several workers outside SageMaker (e.g. on one
# machine): a JSON object host -> "address:port", or one port for every host.
ADDRESSES_ENV = "CASTING_WORKER_ADDRESSES"
PORT_ENV = "CASTING_WORKER_PORT"
DEFAULT_PORT = 8890


def worker_addresses_from_environ(environ=None) -> dict[str, str] | None:
    environ = os.environ if environ is None else environ
    text = environ.get(ADDRESSES_ENV)
    if not text:
        return None
    try:
        addresses = json.loads(text)
    except ValueError:
        raise ValueError(f"{ADDRESSES_ENV} is not a JSON object: {text!r}") from None
    if not isinstance(addresses, dict):
        raise ValueError(f"{ADDRESSES_ENV} must map host names to 'address:port': {text!r}")
    return {str(k): str(v) for k, v in addresses.items()}


def select_strategy(env: Any = None, environ=None):
    """The ``tf.distribute`` strategy for this job.

    * more than one host: ``MultiWorkerMirroredStrategy``; ``TF_CONFIG`` is set from the
      SageMaker hosts first (:func:`casting.sagemaker.tf_config`), unless it is already
      set. Create it before any other TensorFlow work in the process.
    * one host with more than one GPU: ``MirroredStrategy``;
    * otherwise the default strategy.

    Build and compile the model inside ``strategy.scope()``.
    """
    import tensorflow as tf

    environ = os.environ if environ is None else environ
    hosts = tuple(getattr(env, "hosts", ()) or ())
    if len(hosts) > 1:
        from casting.sagemaker import tf_config

        port = int(environ.get(PORT_ENV) or DEFAULT_PORT)
        cfg = tf_config(env, port=port, addresses=worker_addresses_from_environ(environ))
        if "TF_CONFIG" not in os.environ and cfg is not None:
            os.environ["TF_CONFIG"] = json.dumps(cfg)
        log.info("strategy: MultiWorkerMirroredStrategy over %d hosts (TF_CONFIG %s)",
                 len(hosts), os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        log.info("strategy: MirroredStrategy over %d GPUs", len(gpus))
        return tf.distribute.MirroredStrategy()
    log.info("strategy: default (%s)", "1 GPU" if gpus else "CPU")
    return tf.distribute.get_strategy()


def _cluster_workers(strategy) -> tuple[int, int]:
    """(number of workers, this worker's index) from the strategy's cluster resolver."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1, 0
    spec = resolver.cluster_spec().as_dict()
    workers = len(spec.get("worker", [])) + len(spec.get("chief", []))
    if workers <= 1:
        return 1, 0
    index = int(resolver.task_id or 0)
    if resolver.task_type == "worker" and "chief" in spec:
        index += 1
    return workers, index


def is_multi_worker(strategy=None) -> bool:
    """Whether ``strategy`` (default: the current one) spans several workers."""
    if strategy is None:
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
    return _cluster_workers(strategy)[0] > 1


@dataclass(frozen=True)
class Replicas:
    """The shape of a job: ``num_replicas`` in sync over ``num_workers`` workers."""

    num_replicas: int = 1
    num_workers: int = 1
    worker_index: int = 0

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    @property
    def multi_worker(self) -> bool:
        return self.num_workers > 1

    @classmethod
    def of(cls, strategy) -> "Replicas":
        num_workers, index = _cluster_workers(strategy)
        return cls(int(strategy.num_replicas_in_sync), num_workers, index)

    def global_batch(self, per_replica: int) -> int:
        return int(per_replica) * self.num_replicas


def distributed_dataset(strategy, replicas: Replicas, make: Callable[[Any, int], Any],
                        per_replica_batch: int):
    """A dataset for ``model.fit`` with ``per_replica_batch`` images on each replica, so
    ``per_replica_batch`` x replicas per step in all.

    ``make(input_context, batch)`` builds one worker's pipeline (sharded by
    ``input_context``) yielding batches of ``batch`` images, the per-replica batch; the
    worker's replicas take turns at it. On a single replica ``input_context`` is ``None``
    and the plain dataset is returned."""
    if replicas.num_replicas <= 1:
        return make(None, per_replica_batch)
    global_batch = replicas.global_batch(per_replica_batch)

    def fn(context):
        return make(context, context.get_per_replica_batch_size(global_batch))

    return strategy.distribute_datasets_from_function(fn)


def _dtype_of(value):
    """A value's dtype (Python numbers: float64), read from its metadata, not its data."""
    import tensorflow as tf

    return tf.float64 if isinstance(value, (int, float)) else tf.as_dtype(value.dtype)


def _wire_dtype(dtype):
    """The dtype a value travels in through the all-reduce: floats as they are, anything
    else (e.g. the optimizer's int64 step counter) as float64."""
    import tensorflow as tf

    return dtype if dtype.is_floating else tf.float64


def _replica_sum_fn(strategy, values: Sequence[Any], keep_first_only: bool):
    """A tf.function: the all-reduce (sum) over replicas of ``values`` (variables, read on
    each replica, or Python numbers); with ``keep_first_only`` only global replica 0
    contributes, i.e. a broadcast from it. All values must travel in one dtype (the
    all-reduce packs them together)."""
    import tensorflow as tf

    values = list(values)

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        first = tf.equal(ctx.replica_id_in_sync_group, 0)
        out = []
        for value in values:
            tensor = tf.cast(value, _wire_dtype(_dtype_of(value)))
            if keep_first_only:
                tensor = tf.where(first, tensor, tf.zeros_like(tensor))
            out.append(tensor)
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, out)

    @tf.function(autograph=False)
    def run():
        return strategy.run(replica_fn)

    return run


def _local(strategy, result, like: Sequence[Any]) -> list[Any]:
    """This worker's copy of each reduced value, cast back to the dtype of ``like``."""
    import tensorflow as tf

    out = []
    for reduced, value in zip(result, like):
        local = strategy.experimental_local_results(reduced)[0]
        dtype = _dtype_of(value)
        out.append(local if local.dtype == dtype else tf.cast(tf.round(local), dtype))
    return out


def broadcast_from_chief(strategy, variables: Sequence[Any]) -> int:
    """Give every replica the chief's (replica 0's) values of ``variables``. Collective:
    every worker must call it with the same variables in the same order. Returns how many
    variables were broadcast (0 on a single replica)."""
    if strategy.num_replicas_in_sync <= 1:
        return 0
    groups: dict[str, list[Any]] = {}
    for variable in variables:  # one all-reduce per wire dtype (it packs tensors together)
        groups.setdefault(_wire_dtype(_dtype_of(variable)).name, []).append(variable)
    for name in sorted(groups):
        part = groups[name]
        reduced = _replica_sum_fn(strategy, part, keep_first_only=True)()
        for variable, value in zip(part, _local(strategy, reduced, part)):
            variable.assign(value)
    return sum(len(part) for part in groups.values())


def broadcast_int(strategy, value: int) -> int:
    """The chief's ``value`` on every worker (collective)."""
    if strategy.num_replicas_in_sync <= 1:
        return int(value)
    reduced = _replica_sum_fn(strategy, [int(value)], keep_first_only=True)()
    return int(round(float(_local(strategy, reduced, [0.0])[0].numpy())))


_ANY_FNS: dict[tuple[int, bool], Callable] = {}


def any_worker(strategy, flag: bool) -> bool:
    """True on every worker if ``flag`` is true on any (collective: all workers call it at
    the same points; one traced function per strategy and flag value)."""
    if strategy.num_replicas_in_sync <= 1:
        return bool(flag)
    key = (id(strategy), bool(flag))
    fn = _ANY_FNS.get(key)
    if fn is None:
        fn = _ANY_FNS[key] = _replica_sum_fn(strategy, [1.0 if flag else 0.0], False)
    return float(_local(strategy, fn(), [0.0])[0].numpy()) > 0


def weights_digest(variables: Sequence[Any]) -> str:
    """SHA-256 over the values (and shapes) of ``variables``, in order."""
    digest = hashlib.sha256()
    for variable in variables:
        value = np.ascontiguousarray(np.asarray(variable.numpy() if hasattr(
            variable, "numpy") else variable))
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


__all__ = [
    "ADDRESSES_ENV", "PORT_ENV", "DEFAULT_PORT", "select_strategy", "Replicas",
    "is_multi_worker", "distributed_dataset", "broadcast_from_chief", "broadcast_int", "any_worker",
    "weights_digest", "worker_addresses_from_environ",
]
