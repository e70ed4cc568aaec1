"""casting.distribute: strategy choice, replica helpers, and Mask R-CNN under MirroredStrategy.

The two-replica case runs in a subprocess that splits the CPU into two logical devices
(that must happen before TensorFlow starts, which the test process has already done):
MirroredStrategy over them is what one instance with two GPUs runs.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from casting.distribute import (Replicas, any_worker, broadcast_from_chief, broadcast_int,
                                distributed_dataset, is_multi_worker, select_strategy,
                                weights_digest, worker_addresses_from_environ)
from casting.sagemaker import SageMakerEnv, tf_config

ROOT = Path(__file__).resolve().parents[1]


def test_single_replica_helpers_are_no_ops():
    strategy = tf.distribute.get_strategy()
    replicas = Replicas.of(strategy)
    assert replicas == Replicas(1, 1, 0) and replicas.is_chief and not replicas.multi_worker
    assert replicas.global_batch(3) == 3 and not is_multi_worker(strategy)
    v = tf.Variable([1.0, 2.0])
    assert broadcast_from_chief(strategy, [v]) == 0 and v.numpy().tolist() == [1.0, 2.0]
    assert broadcast_int(strategy, 7) == 7
    assert any_worker(strategy, True) is True and any_worker(strategy, False) is False
    made = []

    def make(context, batch):
        made.append((context, batch))
        return tf.data.Dataset.range(4).batch(batch)

    ds = distributed_dataset(strategy, replicas, make, per_replica_batch=2)
    assert made == [(None, 2)] and isinstance(ds, tf.data.Dataset)


def test_select_strategy_multi_host_sets_tf_config_from_the_hosts(tmp_path, monkeypatch):
    # Building the strategy would start a gRPC server; what matters here is TF_CONFIG.
    env = SageMakerEnv.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path),
                                 "SM_HOSTS": '["algo-2","algo-1"]', "SM_CURRENT_HOST": "algo-2"})
    assert tf_config(env) == {"cluster": {"worker": ["algo-1:8890", "algo-2:8890"]},
                              "task": {"type": "worker", "index": 1}}
    addresses = {"algo-1": "127.0.0.1:1111", "algo-2": "127.0.0.1:2222"}
    assert tf_config(env, addresses=addresses)["cluster"]["worker"] == [
        "127.0.0.1:1111", "127.0.0.1:2222"]
    with pytest.raises(ValueError, match="no worker address"):
        tf_config(env, addresses={"algo-1": "127.0.0.1:1111"})
    assert worker_addresses_from_environ(
        {"CASTING_WORKER_ADDRESSES": json.dumps(addresses)}) == addresses
    assert worker_addresses_from_environ({}) is None
    with pytest.raises(ValueError, match="CASTING_WORKER_ADDRESSES"):
        worker_addresses_from_environ({"CASTING_WORKER_ADDRESSES": "algo-1:1"})
    single = SageMakerEnv.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert select_strategy(single) is tf.distribute.get_strategy()


def test_weights_digest_sees_any_change():
    a, b = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3)), tf.Variable([1.0])
    d = weights_digest([a, b])
    assert d == weights_digest([a, b]) and len(d) == 64
    b.assign([1.0 + 1e-7])
    assert weights_digest([a, b]) != d
    assert weights_digest([tf.reshape(a, [3, 2])]) != weights_digest([a])  # shapes count


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from casting.config import Config
    from casting.data.pipeline import make_dataset
    from casting.data.synthetic import generate_records
    from casting.distribute import (Replicas, broadcast_from_chief, distributed_dataset,
                                    weights_digest)
    from casting.model import MaskRCNN
    from casting.training import Plan, make_optimizer

    out = {}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    replicas = Replicas.of(strategy)
    out["replicas"] = [replicas.num_replicas, replicas.num_workers, replicas.worker_index]
    records = generate_records(4, seed=1, size=64, out_dir=sys.argv[1])
    config = Config(image_size=64, class_names=tuple(records.class_names), batch_size=1,
                    max_gt_instances=10, fpn_channels=32, rpn_conv_channels=32,
                    fc_layers_size=64, pre_nms_limit=500, post_nms_rois_training=64,
                    post_nms_rois_inference=64, train_rois_per_image=32, warmup_steps=0,
                    epochs=1, steps_per_epoch=3, learning_rate=0.01, augment=False,
                    scale_learning_rate=True)
    plan = Plan.from_config(config, lr_scale=replicas.num_replicas)
    out["lr"] = plan.stages[0].lr
    with strategy.scope():
        model = MaskRCNN(config)
        optimizer = make_optimizer(config, plan, decoupled_weight_decay=False)
        model.compile(optimizer=optimizer)
    first = next(iter(make_dataset(records, config, training=True)))
    model.calibrate_batchnorm(first)

    def copies(variable):  # the per-device copies of a mirrored variable
        return [c.numpy() for c in strategy.experimental_local_results(variable.value)]

    # make the second replica's copy differ, then broadcast the first replica's values
    kernel = model.weights[0]
    second = strategy.experimental_local_results(kernel.value)[1]
    second.assign(second + 1.0)
    out["differ_before"] = not np.array_equal(*copies(kernel))
    out["broadcast"] = broadcast_from_chief(strategy, list(model.weights))
    out["same_after_broadcast"] = np.array_equal(*copies(kernel))
    seen = []

    def make(context, batch):
        seen.append(batch)
        return make_dataset(records, config, training=True, batch_size=batch,
                            input_context=context)

    data = distributed_dataset(strategy, replicas, make, config.batch_size)
    before = weights_digest(model.weights)
    history = model.fit(data, epochs=1, steps_per_epoch=3, verbose=0)
    out["pipeline_batches"] = seen
    out["losses"] = {k: [float(x) for x in v] for k, v in history.history.items()}
    out["changed"] = weights_digest(model.weights) != before
    out["iterations"] = int(optimizer.iterations.numpy())
    out["replicas_equal"] = all(np.array_equal(*copies(v)) for v in model.trainable_variables)
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow(seconds=40)
def test_mask_rcnn_trains_under_mirrored_strategy_on_two_replicas(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    assert out["replicas"] == [2, 1, 0]
    assert out["lr"] == pytest.approx(0.02)  # scale_learning_rate: x2 replicas
    assert out["differ_before"] and out["same_after_broadcast"] and out["broadcast"] > 100
    # one pipeline (one worker) yielding per-replica batches; each replica takes its own
    assert out["pipeline_batches"] == [1]
    assert out["iterations"] == 3 and out["changed"] and out["replicas_equal"]
    for name in ("loss", "rpn_class_loss", "mrcnn_mask_loss"):
        assert len(out["losses"][name]) == 1 and np.isfinite(out["losses"][name][0])
