"""Faults in training: a non-finite loss stops at its step and nothing non-finite reaches the
disk; a full disk, a vanished folder or a file where the folder should be give errors that
name the folder and leave the earlier checkpoints as they were."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from casting.config import Config
from casting.finite import NonFiniteError, check_finite, nonfinite_logs
from casting.training import (CheckpointManager, CheckpointWriteError, Plan, TrainState,
                              TrainingLoop, build_optimizer_for_all_layers, make_optimizer)
from testkit import h5_weights_finite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = Config(epochs=2, steps_per_epoch=5, learning_rate=0.05, warmup_steps=0,
             checkpoint_every_steps=2, keep_checkpoints=5, seed=7)


def _model(config=CFG):
    keras.utils.set_random_seed(config.seed)
    plan = Plan.from_config(config)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    optimizer = make_optimizer(config, plan)
    model.compile(optimizer=optimizer, loss="mse")
    build_optimizer_for_all_layers(model, optimizer, "all")
    return model, optimizer, plan


def _data(nan_batch=None):
    """Batches of 4 in file order; batch `nan_batch` (1-based, first pass) has a NaN target,
    so its loss is NaN."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True).astype("float32")
    if nan_batch is not None:
        y[(nan_batch - 1) * 4] = np.nan
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()


def test_nonfinite_logs_names_the_bad_entries():
    logs = {"loss": np.float32("nan"), "rpn_class_loss": 0.5, "grad_norm": np.inf,
            "lr": "text", "shaped": np.array([1.0, np.nan])}
    assert nonfinite_logs(logs) == ["loss", "grad_norm", "shaped"]
    assert nonfinite_logs({"loss": 1.0}) == [] and nonfinite_logs(None) == []


def test_nan_loss_stops_at_its_step_and_keeps_the_last_finite_checkpoint(tmp_path, capsys):
    model, _, plan = _model()
    manager = CheckpointManager(tmp_path, keep=5)
    loop = TrainingLoop(model, plan, TrainState(seed=7), manager, checkpoint_every_steps=2,
                        verbose=2)
    with pytest.raises(NonFiniteError) as info:
        loop.run(_data(nan_batch=4))  # steps 1-3 finite, step 4 NaN (its checkpoint's step)
    message = str(info.value)
    assert "epoch 1, step 4 (global step 4)" in message and "loss=nan" in message
    assert str(tmp_path / "ckpt-0000000002") in message  # the last finite checkpoint
    assert "--learning-rate" in message and "--gradient-clip-norm" in message
    assert "casting.data check" in message
    names = sorted(os.listdir(tmp_path))
    assert names == ["ckpt-0000000002"]  # none at step 4, no partial write
    assert h5_weights_finite(tmp_path / "ckpt-0000000002" / "model.weights.h5")
    path, state = manager.latest_valid()
    assert state.global_step == 2
    assert not any(np.all(np.isfinite(w.numpy())) for w in model.weights[:1])  # NaN in memory
    assert "Checkpoint (every 2 steps)" in capsys.readouterr().out


def test_checkpoint_and_model_folder_refuse_nonfinite_weights(tmp_path):
    from casting.model.io import save_model_dir

    model, optimizer, _ = _model()
    manager = CheckpointManager(tmp_path / "ckpt", keep=3)
    manager.save(model, optimizer, TrainState(global_step=1))
    kernel = model.weights[0]
    kernel.assign(np.where(np.arange(kernel.numpy().size).reshape(kernel.shape) == 3,
                           np.inf, kernel.numpy()).astype("float32"))
    with pytest.raises(NonFiniteError, match=r"not writing checkpoint ckpt-0000000002: 1 of"):
        manager.save(model, optimizer, TrainState(global_step=2))
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["ckpt-0000000001"]
    with pytest.raises(NonFiniteError, match="not writing the model folder"):
        save_model_dir(model, str(tmp_path / "model"), saved_model=False)
    assert not (tmp_path / "model").exists()
    check_finite([np.ones(3, "float32"), np.arange(3)], "anything")  # finite: no error


def test_nan_gradient_with_a_finite_loss_is_caught_before_its_checkpoint(tmp_path):
    """A NaN input under ReLU gives a finite loss but NaN gradients: the weights turn NaN
    with no NaN in that step's loss. The checkpoint of that step is refused all the same."""
    model, _, plan = _model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    x[12] = np.nan  # batch 4
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()
    loop = TrainingLoop(model, plan, TrainState(seed=7), CheckpointManager(tmp_path, keep=5),
                        checkpoint_every_steps=2, verbose=0)
    with pytest.raises(NonFiniteError, match="not writing checkpoint ckpt-0000000004"):
        loop.run(data)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-0000000002"]


def test_vanished_folder_is_made_again_and_a_file_in_its_place_is_an_error(tmp_path, caplog):
    import shutil

    model, optimizer, _ = _model()
    folder = tmp_path / "ckpt"
    manager = CheckpointManager(folder, keep=3)
    manager.save(model, optimizer, TrainState(global_step=1))
    shutil.rmtree(folder)
    path = manager.save(model, optimizer, TrainState(global_step=2))
    assert os.path.basename(path) == "ckpt-0000000002" and manager.latest_valid()
    assert "vanished" in caplog.text and str(folder) in caplog.text

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")
    with pytest.raises(CheckpointWriteError, match="is a file, not a folder") as info:
        CheckpointManager(blocked).check_writable()
    assert str(blocked) in str(info.value) and "--checkpoint-dir" in str(info.value)
    manager = CheckpointManager(tmp_path / "later")
    manager.check_writable()
    os.rename(tmp_path / "later", tmp_path / "moved")
    (tmp_path / "later").write_text("x")
    with pytest.raises(CheckpointWriteError, match="is a file, not a folder"):
        manager.save(model, optimizer, TrainState(global_step=3))


DISK_FULL = textwrap.dedent("""
    import os, resource, sys
    sys.path.insert(0, sys.argv[2])
    import keras, numpy as np
    from casting.config import Config
    from casting.training import (CheckpointManager, CheckpointWriteError, Plan,
                                  TrainState, build_optimizer_for_all_layers, make_optimizer)
    config = Config(epochs=1, steps_per_epoch=2, warmup_steps=0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256), keras.layers.Dense(1)])
    optimizer = make_optimizer(config, Plan.from_config(config))
    model.compile(optimizer=optimizer, loss="mse")
    build_optimizer_for_all_layers(model, optimizer, "all")
    manager = CheckpointManager(sys.argv[1], keep=3)
    manager.save(model, optimizer, TrainState(global_step=1))
    # from here no file may grow past 16 KiB: the weights (66 KiB) cannot be written
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.RLIM_INFINITY))
    try:
        manager.save(model, optimizer, TrainState(global_step=2))
    except CheckpointWriteError as exc:
        print("ERROR", exc)
        sys.exit(3)
    print("saved")
""")


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-c", DISK_FULL, str(folder), ROOT],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    out = proc.stdout
    assert f"cannot write a checkpoint in {folder}" in out
    assert "File too large" in out or "Errno 27" in out or "EFBIG" in out, out
    assert "MiB free of" in out and "untouched" in out
    assert sorted(os.listdir(folder)) == ["ckpt-0000000001"]  # no partial write left
    manager = CheckpointManager(folder)
    path, state = manager.latest_valid()
    assert state.global_step == 1
