"""GroupNorm instead of BatchNorm (config.norm = "group"): built, trained, saved, loaded."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from casting.config import Config, ConfigError
from casting.model import MaskRCNN, load_model_dir, save_model_dir
from casting.model.backbone import GN_GROUPS, norm_layer
from casting.model.weights import load_matterport_h5, save_matterport_h5
from shapes import make_shapes_batch

TINY_GN = dict(
    image_size=64, class_names=("rect", "disc"), max_gt_instances=4, train_rois_per_image=16,
    roi_positive_ratio=0.5, post_nms_rois_training=64, post_nms_rois_inference=32,
    pre_nms_limit=256, fpn_channels=64, rpn_conv_channels=64, fc_layers_size=64, batch_size=2,
    learning_rate=0.01, norm="group",
)


def norm_layers(model):
    return {name: layer for name, layer in model.named_layers().items()
            if name.startswith("bn") or "_bn" in name}


def test_norm_layer_choices():
    assert isinstance(norm_layer("bn_x", "batch", False), keras.layers.BatchNormalization)
    gn = norm_layer("bn_x", "group")
    assert isinstance(gn, keras.layers.GroupNormalization) and gn.groups == GN_GROUPS
    with pytest.raises(ValueError, match="norm must be one of"):
        norm_layer("bn_x", "layer")
    with pytest.raises(ConfigError, match="norm must be"):
        Config(norm="instance")


@pytest.fixture(scope="module")
def gn_model():
    """One tiny GroupNorm model for the module, trained for 3 steps."""
    keras.utils.set_random_seed(1)
    model = MaskRCNN(Config(**TINY_GN))
    norms = norm_layers(model)
    gamma = norms["bn2a_branch2a"].gamma.numpy().copy()
    data = make_shapes_batch(2, size=64)
    assert model.calibrate_batchnorm(data) == 0  # nothing to calibrate: a no-op
    model.compile()
    ds = tf.data.Dataset.from_tensor_slices(data).repeat().batch(2)
    history = model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0).history
    return model, gamma, history


def test_group_norm_model_trains_and_its_norm_layers_train_too(gn_model):
    model, gamma, history = gn_model
    norms = norm_layers(model)
    # every normalisation of the backbone and heads, under matterport's BatchNorm names
    assert {"bn_conv1", "bn2a_branch2a", "bn5c_branch2c", "mrcnn_class_bn1",
            "mrcnn_mask_bn4"} <= set(norms)
    assert all(isinstance(layer, keras.layers.GroupNormalization) for layer in norms.values())
    trainable = {id(v) for v in model.trainable_variables}
    assert all(id(v) in trainable for layer in norms.values() for v in layer.weights)
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert not np.array_equal(gamma, norms["bn2a_branch2a"].gamma.numpy())


def test_group_norm_model_saves_and_loads(gn_model, tmp_path):
    model = gn_model[0]
    images = [im.astype(np.uint8) for im in make_shapes_batch(2, size=64)["image"]]
    before = model.detect(images, min_confidence=0.0)
    save_model_dir(model, str(tmp_path / "model"), saved_model=False)
    loaded = load_model_dir(str(tmp_path / "model"))
    assert loaded.config.norm == "group"
    after = loaded.detect(images, min_confidence=0.0)
    for a, b in zip(before, after):
        for key in ("boxes", "scores", "class_ids", "masks"):
            np.testing.assert_array_equal(a[key], b[key])


def test_batchnorm_weights_do_not_load_into_group_norm(gn_model, tmp_path):
    """A matterport (BatchNorm) file: convolutions load, the norm layers are skipped and
    listed (a BatchNorm's four arrays are not a GroupNorm's two). Runs last: it overwrites
    the module model's convolutions."""
    keras.utils.set_random_seed(3)
    source = MaskRCNN(Config(**{**TINY_GN, "norm": "batch"}))
    path = save_matterport_h5(source, str(tmp_path / "matterport.h5"))
    target = gn_model[0]
    report = load_matterport_h5(target, path)
    skipped = dict(report.skipped)
    assert "bn2a_branch2a" in skipped and "4 arrays in file, 2" in skipped["bn2a_branch2a"]
    assert set(norm_layers(target)) <= set(skipped)
    assert "res2a_branch2a" in report.loaded and "mrcnn_mask" in report.loaded
    np.testing.assert_array_equal(
        target.named_layers()["res2a_branch2a"].kernel.numpy(),
        source.named_layers()["res2a_branch2a"].kernel.numpy())
