"""Training machinery with a small real Keras model: schedule, checkpoints, resume, SIGTERM."""

import csv
import logging
import os
import random
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from casting.config import Config
from casting.training import (CheckpointManager, Plan, TerminationFlag, TrainState,
                              TrainingLoop, build_optimizer_for_all_layers,
                              capture_rng_state, make_optimizer, restore_rng_state,
                              select_strategy)


class Tiny(keras.Model):
    def __init__(self):
        super().__init__()
        self.body = keras.layers.Dense(8, activation="relu", name="body")
        self.head = keras.layers.Dense(1, name="head")

    def call(self, x):
        return self.head(self.body(x))

    def set_trainable_layers(self, group):
        self.body.trainable = group == "all"


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) > 0).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()


def _setup(config, plan=None):
    keras.utils.set_random_seed(config.seed)
    plan = plan or Plan.from_config(config)
    model = Tiny()
    model(np.zeros((1, 4), "float32"))
    optimizer = make_optimizer(config, plan)
    model.compile(optimizer=optimizer, loss="mse")
    build_optimizer_for_all_layers(model, optimizer, plan.stage_for_epoch(0).layers)
    return model, optimizer, plan


CFG = Config(epochs=2, steps_per_epoch=5, learning_rate=0.05, warmup_steps=3,
             checkpoint_every_steps=2, keep_checkpoints=3, seed=7)


def test_plan_and_warmup_schedule():
    cfg = CFG.replace(schedule=({"epochs": 2, "layers": "heads", "lr": 0.01},
                                {"epochs": 3, "layers": "all", "lr": 0.001}), warmup_steps=2,
                      lr_decay="none")
    plan = Plan.from_config(cfg)
    assert plan.total_epochs == 5 and plan.total_steps == 25
    assert [s.layers for s in plan.stages] == ["heads", "all"]
    assert plan.stage_for_epoch(1).index == 0 and plan.stage_for_epoch(2).index == 1
    sched = plan.lr_schedule()
    assert sched.value_at(0) == pytest.approx(1e-5)
    assert sched.value_at(1) == pytest.approx(0.01 * (0.001 + 0.999 * 0.5))
    assert sched.value_at(2) == sched.value_at(9) == pytest.approx(0.01)
    assert sched.value_at(10) == pytest.approx(0.001)  # stage 2 starts at step 2*5
    for step in (0, 2, 4, 9, 10, 24):
        assert float(sched(step)) == pytest.approx(sched.value_at(step), rel=1e-6)
    with pytest.raises(ValueError, match="unknown keys"):
        Plan.from_config(CFG.replace(schedule=({"epochs": 1, "lr_rate": 1},)))


def test_optimizer_is_sgd_with_momentum_decay_and_clipping():
    opt = make_optimizer(CFG, Plan.from_config(CFG))
    assert isinstance(opt, keras.optimizers.SGD)
    assert opt.momentum == 0.9 and opt.weight_decay == pytest.approx(1e-4)
    assert opt.global_clipnorm == 5.0


def test_checkpoint_restores_weights_and_optimizer_exactly(tmp_path):
    model, opt, plan = _setup(CFG)
    model.fit(_data(), steps_per_epoch=3, epochs=1, verbose=0)
    manager = CheckpointManager(tmp_path, keep=2)
    state = TrainState(epoch=0, step_in_epoch=3, global_step=3, seed=7, config={"a": 1},
                       history=[{"epoch": 1, "loss": 0.5}])
    path = manager.save(model, opt, state)
    assert os.path.basename(path) == "ckpt-0000000003"
    assert sorted(os.listdir(path)) == ["model.weights.h5", "optimizer.npz", "state.json"]

    model2, opt2, _ = _setup(CFG.replace(seed=99))
    found_path, found = manager.latest_valid()
    assert found_path == path and found.step_in_epoch == 3 and found.history == state.history
    manager.restore(path, model2, opt2)
    for a, b in zip(model.weights, model2.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(opt2.iterations.numpy()) == 3
    momenta = [v for v in opt.variables if "momentum" in v.path]
    assert momenta and any(np.abs(v.numpy()).sum() > 0 for v in momenta)
    for a, b in zip(opt.variables, opt2.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # the same next step from both gives the same weights: the state is complete
    batch = next(iter(_data(1)))
    model.train_on_batch(*batch)
    model2.train_on_batch(*batch)
    for a, b in zip(model.weights, model2.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-7)


def test_keep_newest_k_and_skip_corrupt_or_partial(tmp_path, caplog):
    model, opt, _ = _setup(CFG)
    manager = CheckpointManager(tmp_path, keep=3)
    for step in (1, 2, 3, 4, 5):
        manager.save(model, opt, TrainState(global_step=step, step_in_epoch=step))
    assert [os.path.basename(p) for p in manager.checkpoints()] == [
        "ckpt-0000000005", "ckpt-0000000004", "ckpt-0000000003"]
    # newest: truncated weights; second: no state.json; a partial temporary write
    with open(tmp_path / "ckpt-0000000005" / "model.weights.h5", "r+b") as fh:
        fh.truncate(100)
    os.remove(tmp_path / "ckpt-0000000004" / "state.json")
    os.makedirs(tmp_path / ".tmp-ckpt-0000000006-1-2")
    with caplog.at_level(logging.WARNING, logger="casting.training"):
        path, state = manager.latest_valid()
    assert os.path.basename(path) == "ckpt-0000000003" and state.global_step == 3
    text = caplog.text
    assert "ckpt-0000000005" in text and "model.weights.h5 has 100 bytes" in text
    assert "ckpt-0000000004" in text and "no state.json" in text
    assert ".tmp-ckpt-0000000006-1-2" in text
    # a flipped byte of the same size is caught by the checksum
    with open(tmp_path / "ckpt-0000000003" / "optimizer.npz", "r+b") as fh:
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert manager.latest_valid() is None


def test_rng_state_round_trip():
    keras.utils.set_random_seed(3)
    saved = capture_rng_state()
    first = (random.random(), np.random.rand(), float(tf.random.get_global_generator().normal([])))
    restore_rng_state(saved)
    again = (random.random(), np.random.rand(), float(tf.random.get_global_generator().normal([])))
    assert first == again


def test_stages_switch_trainable_layers(tmp_path):
    cfg = CFG.replace(schedule=({"epochs": 1, "layers": "heads", "lr": 0.05},
                                {"epochs": 1, "layers": "all", "lr": 0.05}),
                      checkpoint_every_steps=0, warmup_steps=0)
    model, opt, plan = _setup(cfg)
    body0 = model.body.kernel.numpy().copy()
    head0 = model.head.kernel.numpy().copy()
    seen = {}

    def after_epoch(state):
        seen[state.epoch] = (model.body.kernel.numpy().copy(), model.head.kernel.numpy().copy())

    loop = TrainingLoop(model, plan, TrainState(seed=7), CheckpointManager(tmp_path, 5),
                        history_csv=str(tmp_path / "history.csv"), on_epoch_end=after_epoch,
                        verbose=0)
    loop.run(_data())
    np.testing.assert_array_equal(seen[1][0], body0)  # heads only: body frozen
    assert not np.array_equal(seen[1][1], head0)
    assert not np.array_equal(seen[2][0], body0)  # all: body trains
    with open(tmp_path / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["stage"] for r in rows] == ["1", "2"]
    assert float(rows[0]["loss"]) > 0


class _Counter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0
        self.test_batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_test_batch_end(self, batch, logs=None):
        self.test_batches += 1


class _SignalAt(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at, self.n = at, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.n += 1
        if self.n == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_checkpoints_mid_epoch_and_resume_runs_only_the_rest(tmp_path, capsys):
    previous = signal.getsignal(signal.SIGTERM)
    try:
        flag = TerminationFlag().install()
        model, opt, plan = _setup(CFG)
        counter = _Counter()
        loop = TrainingLoop(model, plan, TrainState(seed=7), CheckpointManager(tmp_path, 3),
                            terminate=flag, checkpoint_every_steps=2, verbose=2,
                            validation_steps=2, extra_callbacks=[_SignalAt(7), counter])
        loop.run(_data(), validation_data=_data(5))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert loop.interrupted and flag.is_set() and counter.batches == 7
    assert counter.test_batches == 2  # epoch 1's validation; none after the signal
    path, state = CheckpointManager(tmp_path, 3).latest_valid()
    assert (state.epoch, state.step_in_epoch, state.global_step) == (1, 2, 7)
    assert len(state.history) == 1  # epoch 1 done, epoch 2 interrupted
    out = capsys.readouterr().out
    assert "Received signal" in out and "stop signal" in out
    assert "Epoch 2/2 stopped at step 2/5: loss=" in out
    assert "\r" not in out  # verbose=2: no progress-bar noise

    model2, opt2, plan2 = _setup(CFG)
    manager = CheckpointManager(tmp_path, 3)
    path, state = manager.latest_valid()
    state = manager.restore(path, model2, opt2)
    counter2 = _Counter()
    loop2 = TrainingLoop(model2, plan2, state, manager, checkpoint_every_steps=2, verbose=2,
                         extra_callbacks=[counter2])
    loop2.run(_data())
    assert counter2.batches == 3  # only the rest of epoch 2
    assert (state.epoch, state.step_in_epoch, state.global_step) == (2, 0, 10)
    assert int(opt2.iterations.numpy()) == 10
    assert [row["epoch"] for row in state.history] == [1, 2]
    assert "Resuming epoch 2 at step 3" in capsys.readouterr().out


def test_a_run_stopped_and_resumed_ends_with_the_weights_of_one_that_was_not(tmp_path):
    """The loop asks the data function for the stream from the global step it resumes at,
    so an interrupted run trains on the same batches in the same order."""
    def stream(step):
        return _data().skip(step)

    model, _, plan = _setup(CFG)
    TrainingLoop(model, plan, TrainState(seed=7), None, verbose=0).run(stream)
    straight = [w.numpy() for w in model.weights]

    previous = signal.getsignal(signal.SIGTERM)
    try:
        flag = TerminationFlag().install()
        model, _, plan = _setup(CFG)
        loop = TrainingLoop(model, plan, TrainState(seed=7), CheckpointManager(tmp_path, 3),
                            terminate=flag, checkpoint_every_steps=2, verbose=0,
                            extra_callbacks=[_SignalAt(7)])
        loop.run(stream)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert loop.interrupted
    model2, opt2, plan2 = _setup(CFG)
    manager = CheckpointManager(tmp_path, 3)
    state = manager.restore(manager.latest_valid()[0], model2, opt2)
    assert state.global_step == 7
    TrainingLoop(model2, plan2, state, manager, checkpoint_every_steps=2, verbose=0).run(stream)
    for a, b in zip(straight, model2.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_select_strategy_single_host_is_default():
    class Env:
        hosts = ("algo-1",)
    strategy = select_strategy(Env())
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


def test_cosine_decay_and_warmup_at_most_a_tenth_of_the_run():
    cfg = CFG.replace(epochs=4, steps_per_epoch=25, learning_rate=0.02, warmup_steps=50,
                      lr_decay="cosine")
    plan = Plan.from_config(cfg)
    assert plan.total_steps == 100 and plan.warmup_steps == 10  # 50 asked, a tenth kept
    assert "warm-up 10 steps" in plan.describe() and "cosine" in plan.describe()
    sched = plan.lr_schedule()
    assert sched.value_at(0) == pytest.approx(0.02 * 0.001 * 1.0)
    assert sched.value_at(50) == pytest.approx(0.02 * 0.5)  # half way: cos(pi/2)
    assert sched.value_at(100) == pytest.approx(0.0, abs=1e-12)
    values = [sched.value_at(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # falls after the warm-up
    for step in (0, 5, 10, 50, 99):
        assert float(sched(step)) == pytest.approx(sched.value_at(step), rel=1e-5, abs=1e-9)
    flat = Plan.from_config(cfg.replace(lr_decay="none")).lr_schedule()
    assert flat.value_at(20) == flat.value_at(99) == pytest.approx(0.02)
