"""Mixed precision: the policy each part computes in, training in bfloat16 and float16 (with
its loss scale checkpointed), and a float32 model folder from a mixed-precision model."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from casting import precision as P
from casting.config import Config, ConfigError
from casting.hparams import HyperparameterError, parse_hyperparameters
from casting.model import MaskRCNN, load_model_dir, save_model_dir
from casting.model.io import SAVED_MODEL_DIR
from casting.model.roi_heads import pool
from casting.training.checkpoints import CheckpointManager, TrainState
from shapes import make_shapes_batch

TINY = dict(
    image_size=128, class_names=("rect", "disc"), max_gt_instances=4, train_rois_per_image=32,
    roi_positive_ratio=0.5, post_nms_rois_training=256, post_nms_rois_inference=128,
    pre_nms_limit=1000, fpn_channels=64, rpn_conv_channels=64, fc_layers_size=256,
    batch_size=2, learning_rate=0.02, norm="group", warmup_steps=0,
)


def _fit(model, data, steps, epochs):
    ds = tf.data.Dataset.from_tensor_slices(data).shuffle(4, seed=0).repeat().batch(2)
    return model.fit(ds, steps_per_epoch=steps, epochs=epochs, verbose=0).history


# ---- choosing a precision ----------------------------------------------------------------
@pytest.mark.parametrize("capability, expected", [
    ((9, 0), "mixed_bfloat16"), ((8, 6), "mixed_bfloat16"), ((8, 0), "mixed_bfloat16"),
    ((7, 5), "mixed_float16"), ((7, 0), "mixed_float16"), ((6, 1), "float32"),
    (None, "float32"),
])
def test_auto_picks_by_compute_capability(capability, expected):
    assert P.for_compute_capability(capability) == expected


def test_resolve_without_a_gpu_and_bad_names():
    assert not tf.config.list_physical_devices("GPU")  # this machine kind has none
    assert P.resolve("auto") == ("float32", "auto: no GPU")
    assert P.resolve("mixed_float16") == ("mixed_float16", "as requested")
    with pytest.raises(ValueError, match="float16"):
        P.resolve("half")
    with pytest.raises(ConfigError, match="precision must be one of"):
        Config(precision="auto")  # the config holds a resolved precision


def test_hyperparameter():
    assert parse_hyperparameters([]).precision == "auto"
    hp = parse_hyperparameters(["--precision", '"Mixed_BFloat16"'])
    assert hp.precision == "mixed_bfloat16"
    with pytest.raises(HyperparameterError, match="--precision must be one of"):
        parse_hyperparameters(["--precision", "fp16"])


def test_policy_scope_restores_the_global_policy():
    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError):
        with P.policy_scope("mixed_float16"):
            assert keras.layers.Dense(2).compute_dtype == "float16"
            raise RuntimeError("inside")
    assert keras.config.dtype_policy().name == before
    assert keras.layers.Dense(2).compute_dtype == "float32"


def test_scaled_step_logs():
    def logs(norm, scale):
        out = P.scaled_step_logs(tf.constant(norm), tf.constant(scale))
        return float(out[0]), float(out[1])

    assert logs(3.5, 1024.0) == (3.5, 1024.0)
    assert logs(math.inf, 1024.0) == (0.0, 1024.0)  # an overflow, skipped: not divergence
    assert math.isnan(logs(math.nan, 0.5)[0])  # the scale collapsed: the loop stops


# ---- the model in each precision -----------------------------------------------------------
@pytest.fixture(scope="module")
def bf16():
    """A tiny model trained 24 steps in mixed_bfloat16 on four synthetic images."""
    keras.utils.set_random_seed(0)
    data = make_shapes_batch(4)
    model = MaskRCNN(Config(**TINY, precision="mixed_bfloat16"))
    model.compile()
    history = _fit(model, data, 8, 3)
    return model, data, history


def test_mixed_policy_where_it_belongs(bf16):
    model, data, _ = bf16
    conv = model.backbone_fpn.get_layer("res2a_branch2a")
    assert (conv.compute_dtype, conv.kernel.dtype) == ("bfloat16", "float32")
    assert all(v.dtype == "float32" for v in model.weights)
    losses = model.compute_losses({k: v[:2] for k, v in data.items()}, training=False)
    assert all(v.dtype == tf.float32 for v in losses.values())
    pyramid = model.pyramid(data["image"][:1])
    assert pyramid[0].dtype == tf.bfloat16
    logits, deltas = model.rpn(pyramid)
    assert logits.dtype == deltas.dtype == tf.float32
    assert isinstance(model.optimizer, keras.optimizers.SGD)  # no loss scaling for bfloat16


@pytest.mark.slow(seconds=100)
def test_bfloat16_trains(bf16):
    _, _, history = bf16
    for name in ("loss", "rpn_class_loss", "mrcnn_class_loss", "mrcnn_mask_loss"):
        assert np.all(np.isfinite(history[name])), name
        assert history[name][-1] < history[name][0], (name, history[name])


def test_exported_model_is_float32_and_matches(bf16, tmp_path):
    """The model folder of a bfloat16 model: float32 weights and a float32 SavedModel; on
    the same boxes, its float32 class and mask probabilities are within bfloat16's rounding
    of the mixed model's own (max difference 0.1, mean 0.02)."""
    model, data, _ = bf16
    save_model_dir(model, str(tmp_path))
    served = load_model_dir(str(tmp_path))
    assert served.config.precision == "float32"
    assert Config.load(str(tmp_path / "config.json")).precision == "mixed_bfloat16"
    images, boxes = data["image"][:2], tf.constant(data["gt_boxes"][:2])
    cfg = model.config
    probs, masks = [], []
    for m in (model, served):
        pyramid = m.pyramid(images)
        logits, _ = m.box_head(pool(pyramid, boxes, cfg.pool_size))
        probs.append(tf.nn.softmax(logits).numpy())
        masks.append(tf.sigmoid(m.mask_head(pool(pyramid, boxes, cfg.mask_pool_size))).numpy())
    for mine, theirs in (probs, masks):
        assert np.isfinite(theirs).all()
        diff = np.abs(mine - theirs)
        assert diff.max() < 0.1 and diff.mean() < 0.02, (diff.max(), diff.mean())
    assert served.detect([np.asarray(data["image"][0])], min_confidence=0.3)  # it detects
    # the SavedModel: float32 in, float32 out
    sig = tf.saved_model.load(str(tmp_path / SAVED_MODEL_DIR)).signatures["serve"]
    assert all(spec.dtype == tf.float32 for spec in sig.structured_input_signature[1].values())
    for name in ("boxes", "scores", "masks"):
        assert sig.structured_outputs[name].dtype == tf.float32


@pytest.mark.slow(seconds=140)
def test_float16_trains_and_checkpoints_its_loss_scale(tmp_path):
    """float16: a LossScaleOptimizer; three steps with finite, falling losses; the loss scale and
    the SGD state survive a checkpoint round trip into a new model."""
    keras.utils.set_random_seed(1)
    data = make_shapes_batch(2)
    config = Config(**dict(TINY, image_size=64, fpn_channels=32, rpn_conv_channels=32,
                           fc_layers_size=64), precision="mixed_float16")
    model = MaskRCNN(config)
    model.compile()
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = _fit(model, data, 1, 3)  # three epochs of one step: each step's losses
    assert all(np.all(np.isfinite(v)) for v in history.values()), history
    assert history["rpn_class_loss"][-1] < history["rpn_class_loss"][0], history
    assert history["loss"][-1] < history["loss"][0], history
    assert "loss_scale" in history
    model.optimizer.dynamic_scale.assign(1024.0)  # a value the fresh optimizer lacks
    manager = CheckpointManager(str(tmp_path), keep=2)
    path = manager.save(model, model.optimizer, TrainState(seed=1, global_step=3))

    other = MaskRCNN(config)
    other.compile()  # builds the optimizer (a second build would make new variables)
    assert float(other.optimizer.dynamic_scale.numpy()) == 2.0 ** 15
    manager.restore(path, other, other.optimizer)
    assert float(other.optimizer.dynamic_scale.numpy()) == 1024.0
    assert int(other.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())
    for a, b in zip(model.optimizer.variables, other.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # resumed in float32: the SGD state loads, the loss scale is dropped
    plain = MaskRCNN(config.replace(precision="float32"))
    plain.compile()
    manager.restore(path, plain, plain.optimizer)
    inner = model.optimizer.inner_optimizer.variables
    for a, b in zip(inner, plain.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
