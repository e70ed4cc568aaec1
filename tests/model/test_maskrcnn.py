"""The whole model: it learns, predicts at the right coordinates, saves, loads and exports."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from casting.config import LOSS_NAMES, Config
from casting.model import MaskRCNN, ModelDirError, load_model_dir, save_model_dir
from casting.model.io import SAVED_MODEL_DIR
from shapes import make_shapes_batch, mask_iou

TINY = dict(
    image_size=128, class_names=("rect", "disc"), max_gt_instances=4, train_rois_per_image=32,
    roi_positive_ratio=0.5, post_nms_rois_training=256, post_nms_rois_inference=128,
    pre_nms_limit=1000, fpn_channels=64, rpn_conv_channels=64, fc_layers_size=256, batch_size=2,
    learning_rate=0.02, detection_min_confidence=0.5,
)


def best_ious(detections, batch):
    """For every ground-truth instance, the best mask IoU among detections of its class."""
    out = []
    for i, det in enumerate(detections):
        for k in range(int(batch["num_instances"][i])):
            cls = batch["gt_class_ids"][i, k]
            cand = [mask_iou(det["masks"][j], batch["gt_masks"][i, k])
                    for j in range(len(det["class_ids"])) if det["class_ids"][j] == cls]
            out.append(max(cand, default=0.0))
    return np.array(out)


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained from scratch on four synthetic images (~200 CPU steps)."""
    keras.utils.set_random_seed(0)
    data = make_shapes_batch(4)
    model = MaskRCNN(Config(**TINY))
    model.calibrate_batchnorm({k: v[:2] for k, v in data.items()})
    model.compile()
    ds = tf.data.Dataset.from_tensor_slices(data).shuffle(4, seed=0).repeat().batch(2)
    history = model.fit(ds, steps_per_epoch=25, epochs=6, verbose=0).history
    model.optimizer.learning_rate.assign(0.002)
    history2 = model.fit(ds, steps_per_epoch=25, epochs=2, verbose=0).history
    for name in history:
        history[name] += history2[name]
    return model, data, history


@pytest.mark.slow(seconds=95)
def test_losses_are_logged_and_go_down(trained):
    _, _, history = trained
    for name in ("loss",) + LOSS_NAMES:
        assert name in history, name
        assert np.all(np.isfinite(history[name]))
    for name in LOSS_NAMES:
        assert history[name][-1] < 0.6 * history[name][0], (name, history[name])
    # each step's gradient norm (before clipping) is logged, for the loop's NaN stop
    assert np.all(np.isfinite(history["grad_norm"])) and min(history["grad_norm"]) > 0


def test_learns_masks_on_its_training_images(trained):
    model, data, _ = trained
    dets = model.detect([im.astype(np.uint8) for im in data["image"]])
    ious = best_ious(dets, data)
    assert ious.mean() >= 0.8, ious
    assert ious.min() >= 0.6, ious
    for det in dets:
        assert det["masks"].dtype == bool and det["masks"].shape[1:] == (128, 128)
        assert np.all(det["scores"] >= 0.5)


def test_non_square_input_maps_back_to_original_pixels(trained):
    model, data, _ = trained
    # the left half of image 0 at twice the size: 256 x 128 -> scale 0.5 inside the model,
    # which then sees exactly the left half of the training image
    image = data["image"][0].astype(np.uint8)
    big = np.repeat(np.repeat(image[:, :64], 2, axis=0), 2, axis=1)
    det = model.detect([big])[0]
    assert det["masks"].shape[1:] == (256, 128)
    gt_boxes = data["gt_boxes"][0, :2]
    inside = [k for k in range(2) if gt_boxes[k, 3] <= 64]
    for k in inside:
        want = gt_boxes[k] * 2.0
        cls = data["gt_class_ids"][0, k]
        cand = [b for b, c in zip(det["boxes"], det["class_ids"]) if c == cls]
        assert cand, f"class {cls} not found"
        err = min(np.abs(np.asarray(b) - want).max() for b in cand)
        assert err <= 8.0, (want, cand)
    assert np.all(det["boxes"][:, 2] <= 256) and np.all(det["boxes"][:, 3] <= 128)


def test_save_load_gives_identical_predictions(trained, tmp_path):
    model, data, _ = trained
    images = [im.astype(np.uint8) for im in data["image"][:2]]
    before = model.detect(images, min_confidence=0.0)
    save_model_dir(model, str(tmp_path / "model"))
    assert sorted(os.listdir(tmp_path / "model")) == ["config.json", "model.weights.h5",
                                                      SAVED_MODEL_DIR]
    loaded = load_model_dir(str(tmp_path / "model"))
    assert loaded.config == model.config
    after = loaded.detect(images, min_confidence=0.0)
    for a, b in zip(before, after):
        for key in ("boxes", "scores", "class_ids", "masks"):
            np.testing.assert_array_equal(a[key], b[key])

    # the SavedModel's serving signature gives the graph's detections
    served = tf.saved_model.load(str(tmp_path / "model" / SAVED_MODEL_DIR))
    batch = tf.constant(data["image"][:1])
    info = tf.constant(data["image_info"][:1])
    got = served.serve(batch, info)
    want = model.infer(batch, info, model.config.detection_min_confidence)
    n = int(want["num_detections"][0])
    assert int(got["num_detections"][0]) == n
    np.testing.assert_allclose(got["boxes"][0, :n], want["boxes"][0, :n], atol=1e-3)


def test_keras_file_round_trip(trained, tmp_path):
    model, data, _ = trained
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    image = [data["image"][0].astype(np.uint8)]
    a, b = model.detect(image)[0], loaded.detect(image)[0]
    np.testing.assert_array_equal(a["boxes"], b["boxes"])
    np.testing.assert_array_equal(a["masks"], b["masks"])


def test_load_model_dir_errors_name_the_file(tmp_path):
    with pytest.raises(ModelDirError, match="config.json"):
        load_model_dir(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.weights.h5").write_bytes(b"junk")
    with pytest.raises(ModelDirError, match=re.escape(str(tmp_path / "config.json"))):
        load_model_dir(str(tmp_path))


def test_layer_names_and_trainable_groups():
    model = MaskRCNN(Config(**TINY))
    names = set(model.named_layers())
    for name in ("conv1", "bn_conv1", "res2a_branch2a", "res2a_branch1", "bn2a_branch2a",
                 "res4f_branch2c", "res5c_branch2c", "fpn_c5p5", "fpn_c2p2", "fpn_p2", "fpn_p5",
                 "rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred", "mrcnn_class_conv1",
                 "mrcnn_class_bn1", "mrcnn_class_conv2", "mrcnn_class_bn2", "mrcnn_class_logits",
                 "mrcnn_bbox_fc", "mrcnn_mask_conv1", "mrcnn_mask_bn4", "mrcnn_mask_deconv",
                 "mrcnn_mask"):
        assert name in names, name
    assert "res4g_branch2a" not in names  # resnet50: stage 4 ends at f

    def trained_names():
        return {n for n, layer in model.named_layers().items() if layer.trainable}

    model.set_trainable_layers("heads")
    assert trained_names() and all(re.match(r"(mrcnn|rpn|fpn)_", n) for n in trained_names())
    model.set_trainable_layers("4+")
    assert "res4a_branch2a" in trained_names() and "res3a_branch2a" not in trained_names()
    model.set_trainable_layers("all")
    assert "conv1" in trained_names()
    # frozen BatchNorm never trains
    assert not any(n.startswith("bn") for n in trained_names())
    assert model.named_layers()["conv1"].kernel.shape == (7, 7, 3, 64)
    assert model.named_layers()["mrcnn_class_conv1"].kernel.shape == (7, 7, 64, 256)


def test_resnet101_has_23_blocks_in_stage_4():
    model = MaskRCNN(Config(**{**TINY, "backbone": "resnet101"}))
    names = model.named_layers()
    assert "res4w_branch2c" in names and "res4x_branch2c" not in names


def test_trains_on_crops_smaller_than_its_input_size():
    """train_crop_size: a model built for 128-px inputs computes the losses of a 64-px
    training crop with the crop's own anchors and clipping, exactly as a model built for
    64-px inputs with the same weights does, and still detects at 128 px."""
    keras.utils.set_random_seed(0)
    big = MaskRCNN(Config(**{**TINY, "train_crop_size": 64}))
    small = MaskRCNN(Config(**{**TINY, "image_size": 64}))
    small.set_weights(big.get_weights())
    crop = make_shapes_batch(2, size=64)
    seed = tf.constant([3, 4], tf.int64)
    got = big.compute_losses(crop, training=False, seed=seed)
    want = small.compute_losses(crop, training=False, seed=seed)
    for name in LOSS_NAMES:
        assert np.isfinite(got[name].numpy()), name
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-5, err_msg=name)
    assert big.anchors_for_size(64).shape == small.anchors.shape
    assert big.anchors_for_size(128) is big.anchors
    det = big.detect([make_shapes_batch(1)["image"][0].astype(np.uint8)], min_confidence=0.0)
    assert det[0]["masks"].shape[1:] == (128, 128)
