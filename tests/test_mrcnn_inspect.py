"""matterport's inspection tools on our model, walked the way its inspect_model notebook does:
ground truth and anchors, RPN targets and predictions, proposals, stage-2 detections and
masks, training targets, precision-recall, weight statistics. One tiny model, trained for a
few steps at 64 px, is shared by the module."""

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from mrcnn import utils, visualize  # noqa: E402
from mrcnn.config import Config  # noqa: E402


class InspectConfig(Config):
    NAME = "inspect"
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 1 + 2
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    BACKBONE = "resnet50"
    TOP_DOWN_PYRAMID_SIZE = 32
    FPN_CLASSIF_FC_LAYERS_SIZE = 64
    RPN_CONV_CHANNELS = 32
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    TRAIN_ROIS_PER_IMAGE = 32
    ROI_POSITIVE_RATIO = 0.5
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    PRE_NMS_LIMIT = 400
    POST_NMS_ROIS_TRAINING = 64
    POST_NMS_ROIS_INFERENCE = 48
    MAX_GT_INSTANCES = 3
    DETECTION_MAX_INSTANCES = 6
    DETECTION_MIN_CONFIDENCE = 0.05
    STEPS_PER_EPOCH = 3
    VALIDATION_STEPS = 0
    LEARNING_RATE = 0.01


class BlobsDataset(utils.Dataset):
    """A square (class 1) and a disc (class 2) on 48 x 80 images (not square, so that
    resizing into the model's input is exercised)."""

    def load_blobs(self, count):
        self.add_class("blobs", 1, "square")
        self.add_class("blobs", 2, "disc")
        for i in range(count):
            self.add_image("blobs", image_id=i, path=None, height=48, width=80,
                           square=(6 + 2 * i, 8 + 3 * i, 14), disc=(26, 52 - 2 * i, 8))

    def load_mask(self, image_id):
        info = self.image_info[image_id]
        masks = np.zeros((48, 80, 2), bool)
        y, x, s = info["square"]
        masks[y:y + s, x:x + s, 0] = True
        cy, cx, r = info["disc"]
        yy, xx = np.mgrid[:48, :80]
        masks[:, :, 1] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        return masks, np.array([1, 2], np.int32)

    def load_image(self, image_id):
        image = np.full((48, 80, 3), 25, np.uint8)
        masks, _ = self.load_mask(image_id)
        image[masks[:, :, 0]] = (230, 120, 30)
        image[masks[:, :, 1]] = (40, 200, 230)
        return image


def _png(fig, path):
    fig.savefig(path)
    visualize.plt.close("all")
    assert path.stat().st_size > 2000
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import mrcnn.model as modellib

    np.random.seed(3)
    dataset = BlobsDataset()
    dataset.load_blobs(4)
    dataset.prepare()
    config = InspectConfig()
    logs = str(tmp_path_factory.mktemp("logs"))
    model = modellib.MaskRCNN(mode="training", config=config, model_dir=logs)
    model.train(dataset, None, learning_rate=config.LEARNING_RATE, epochs=1, layers="all")
    inference = modellib.MaskRCNN(mode="inference", config=config, model_dir=logs)
    inference.load_weights(inference.find_last(), by_name=True)
    return inference, dataset, config


# ---- utils: boxes, masks, anchors, batches --------------------------------------------
def test_boxes_masks_anchors_and_batches():
    import tensorflow as tf

    from casting.model.anchors import generate_anchors as model_anchors
    from mrcnn import model as modellib

    shape = (48, 80)
    boxes = np.array([[0, 0, 48, 80], [3, 5, 20, 41]], np.int32)
    normed = utils.norm_boxes(boxes, shape)
    np.testing.assert_allclose(normed[0], [0, 0, 1, 1])
    np.testing.assert_allclose(normed[1], [3 / 47, 5 / 79, 19 / 47, 40 / 79], rtol=1e-6)
    np.testing.assert_array_equal(utils.denorm_boxes(normed, shape), boxes)
    np.testing.assert_allclose(modellib.norm_boxes_graph(boxes, shape).numpy(), normed, rtol=1e-6)
    np.testing.assert_array_equal(modellib.denorm_boxes_graph(normed, shape).numpy(), boxes)

    masks = np.zeros((48, 80, 2), bool)
    masks[3:20, 5:41, 0] = True  # a rectangle filling its box
    yy, xx = np.mgrid[:48, :80]
    masks[:, :, 1] = (yy - 30) ** 2 + (xx - 50) ** 2 <= 11 ** 2
    bbox = utils.extract_bboxes(masks)
    mini = utils.minimize_mask(bbox, masks, (28, 28))
    assert mini.shape == (28, 28, 2) and mini.dtype == bool and mini[:, :, 0].all()
    full = utils.expand_mask(bbox, mini, (48, 80, 3))
    assert full.shape == (48, 80, 2)
    np.testing.assert_array_equal(full[:, :, 0], masks[:, :, 0])
    assert utils.compute_overlaps_masks(full[:, :, 1:], masks[:, :, 1:])[0, 0] > 0.9
    molded = utils.mold_mask(masks[:, :, 1], InspectConfig())
    assert molded.shape == (28, 28) and set(np.unique(molded)) == {0.0, 1.0}
    back = utils.unmold_mask(molded, bbox[1], (48, 80))
    assert back.dtype == bool and utils.compute_overlaps_masks(
        back[:, :, None], masks[:, :, 1:])[0, 0] > 0.9
    with pytest.raises(ValueError, match="zero area"):
        utils.minimize_mask(np.array([[4, 4, 4, 9]]), masks[:, :, :1], (8, 8))

    # anchors: the model's own, in the order of the RPN's outputs
    config = InspectConfig()
    shapes = modellib.compute_backbone_shapes(config, config.IMAGE_SHAPE)
    np.testing.assert_array_equal(shapes, [[16, 16], [8, 8], [4, 4], [2, 2], [1, 1]])
    np.testing.assert_array_equal(modellib.compute_backbone_shapes(config, (48, 80)),
                                  [[12, 20], [6, 10], [3, 5], [2, 3], [1, 2]])
    anchors = utils.generate_pyramid_anchors(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
                                             shapes, config.BACKBONE_STRIDES, 1)
    np.testing.assert_array_equal(anchors, model_anchors(64, config.RPN_ANCHOR_SCALES,
                                                         config.RPN_ANCHOR_RATIOS,
                                                         config.BACKBONE_STRIDES))
    level = utils.generate_anchors([8, 16], [0.5, 1, 2], (4, 4), 4, anchor_stride=2)
    assert level.shape == (2 * 2 * 6, 4)
    sides = np.stack([level[:, 2] - level[:, 0], level[:, 3] - level[:, 1]], 1)
    np.testing.assert_allclose(sides[3], [16, 16])  # ratio 1, scale 16 (ratio-major)
    np.testing.assert_allclose(sides[4], [8 / np.sqrt(2), 8 * np.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose((level[0, :2] + level[0, 2:]) / 2, [2, 2])  # cell centre
    np.testing.assert_allclose((level[6, :2] + level[6, 2:]) / 2, [2, 10])  # every 2nd cell

    # batch_slice: NumPy in and out, and tensors with names
    stacked = utils.batch_slice([np.arange(6).reshape(3, 2), np.ones((3, 2))],
                                lambda a, b: (a + b, a * 2), 3)
    np.testing.assert_array_equal(stacked[0], np.arange(6).reshape(3, 2) + 1)
    one = utils.batch_slice(tf.constant([[1.0, 2.0], [3.0, 4.0]]), tf.reduce_sum, 2, names=["s"])
    assert tf.is_tensor(one) and one.numpy().tolist() == [3.0, 7.0]

    meta = modellib.compose_image_meta(7, (48, 80, 3), (64, 64, 3), (0, 0, 38, 64), 0.8,
                                       np.ones(3))
    parsed = modellib.parse_image_meta_graph(meta[None])
    assert parsed["window"].numpy().tolist() == [[0, 0, 38, 64]]
    assert float(parsed["scale"][0]) == pytest.approx(0.8)
    np.testing.assert_array_equal(parsed["original_image_shape"].numpy(),
                                  modellib.parse_image_meta(meta[None])["original_image_shape"])


# ---- the inspect_model flow ---------------------------------------------------------------
def test_ground_truth_anchors_and_rpn_targets(trained, tmp_path):
    import mrcnn.model as modellib

    model, dataset, config = trained
    image, meta, gt_class_id, gt_bbox, gt_mask = modellib.load_image_gt(dataset, config, 1)
    assert image.shape == (64, 64, 3) and gt_mask.shape == (64, 64, 2)
    normed = model.get_anchors(image.shape)
    anchors = model.anchors
    np.testing.assert_array_equal(anchors, model.keras_model.anchors)
    np.testing.assert_allclose(utils.denorm_boxes(normed, image.shape[:2]), np.round(anchors))

    match, rpn_bbox = modellib.build_rpn_targets(image.shape, anchors, gt_class_id, gt_bbox,
                                                 config, seed=5)
    assert match.shape == (anchors.shape[0],) and rpn_bbox.shape == (64, 4)
    positive, negative = np.where(match == 1)[0], np.where(match == -1)[0]
    assert 0 < len(positive) <= 32 and len(positive) + len(negative) == 64
    iou = utils.compute_overlaps(anchors, gt_bbox)
    best_of_gt = (iou >= iou.max(axis=0, keepdims=True) - 1e-6).any(axis=1)
    assert all(iou[i].max() >= 0.7 or best_of_gt[i] for i in positive)
    assert (iou[negative].max(axis=1) < 0.3).all()
    # the deltas bring each positive anchor onto its ground truth
    std = np.asarray(config.RPN_BBOX_STD_DEV)
    refined = utils.apply_box_deltas(anchors[positive], rpn_bbox[:len(positive)] * std)
    np.testing.assert_allclose(refined, gt_bbox[np.argmax(iou[positive], axis=1)], atol=1e-3)
    assert not rpn_bbox[len(positive):].any()
    # a crowd box keeps anchors on it out of the negatives
    crowd = np.concatenate([gt_class_id, [-1]]), np.concatenate([gt_bbox, [[40, 0, 64, 30]]])
    match_crowd, _ = modellib.build_rpn_targets(image.shape, anchors, *crowd, config, seed=5)
    near = utils.compute_overlaps(anchors, np.array([[40, 0, 64, 30]])).max(axis=1) >= 0.001
    assert not (match_crowd[near] == -1).any()

    fig = visualize.draw_boxes(image, boxes=anchors[positive], refined_boxes=refined,
                               title="positive anchors")
    _png(fig, tmp_path / "anchors.png")
    visualize.display_top_masks(image, gt_mask, gt_class_id, dataset.class_names)
    visualize.plt.close("all")


def test_rpn_predictions_and_proposals(trained, tmp_path):
    model, dataset, config = trained
    image = dataset.load_image(0)
    km = model.keras_model
    pillar = km.get_layer("ROI").output
    rpn = model.run_graph([image], [
        ("rpn_class", km.get_layer("rpn_class").output),
        ("rpn_bbox", "rpn_bbox"),
        ("pre_nms_anchors", model.ancestor(pillar, "ROI/pre_nms_anchors:0")),
        ("refined_anchors", model.ancestor(pillar, "ROI/refined_anchors:0")),
        ("refined_anchors_clipped", model.ancestor(pillar, "ROI/refined_anchors_clipped:0")),
        ("post_nms_anchor_ix", model.ancestor(pillar, "ROI/rpn_non_max_suppression:0")),
        ("proposals", pillar),
    ])
    a = model.anchors.shape[0]
    assert list(rpn) == ["rpn_class", "rpn_bbox", "pre_nms_anchors", "refined_anchors",
                         "refined_anchors_clipped", "post_nms_anchor_ix", "proposals"]
    assert rpn["rpn_class"].shape == (1, a, 2) and rpn["rpn_bbox"].shape == (1, a, 4)
    np.testing.assert_allclose(rpn["rpn_class"].sum(-1), 1.0, rtol=1e-5)
    assert rpn["pre_nms_anchors"].shape == (1, 400, 4)
    assert rpn["proposals"].shape == (1, 48, 4)
    # the pre-NMS anchors are the best-scoring ones, and the proposals are what NMS kept
    best = np.sort(np.argsort(-rpn["rpn_class"][0, :, 1])[:400])
    chosen = model.get_anchors(config.IMAGE_SHAPE)[best]
    np.testing.assert_allclose(np.unique(rpn["pre_nms_anchors"][0].round(4), axis=0),
                               np.unique(chosen.round(4), axis=0))
    ix = rpn["post_nms_anchor_ix"][0]
    kept = ix[ix >= 0]
    assert len(kept) > 0
    np.testing.assert_allclose(rpn["proposals"][0, :len(kept)],
                               rpn["refined_anchors_clipped"][0, kept], atol=1e-6)
    clipped = rpn["refined_anchors_clipped"][0]
    assert clipped.min() >= -1 / 63 - 1e-6 and clipped.max() <= 1 + 1e-6

    h, w = config.IMAGE_SHAPE[:2]
    fig = visualize.draw_boxes(
        image, boxes=utils.denorm_boxes(rpn["pre_nms_anchors"][0, :10], (h, w)),
        refined_boxes=utils.denorm_boxes(rpn["refined_anchors"][0, :10], (h, w)))
    _png(fig, tmp_path / "refined.png")


def test_stage2_detections_and_masks_agree_with_detect(trained, tmp_path):
    model, dataset, config = trained
    images = [dataset.load_image(0), dataset.load_image(2)]
    km = model.keras_model
    out = model.run_graph(images, [
        ("proposals", km.get_layer("ROI").output),
        ("probs", km.get_layer("mrcnn_class").output),
        ("deltas", km.get_layer("mrcnn_bbox").output),
        ("masks", km.get_layer("mrcnn_mask").output),
        ("detections", km.get_layer("mrcnn_detection").output),
        ("conv1", km.get_layer("conv1").output),
        ("res4f_out", km.get_layer("res4f_out").output),
        ("C5", "C5"),
        ("P2", "P2"),
        ("input_image", "input_image"),
    ])
    assert out["probs"].shape == (2, 48, 3) and out["deltas"].shape == (2, 48, 3, 4)
    assert out["detections"].shape == (2, 6, 6) and out["masks"].shape == (2, 6, 28, 28, 3)
    assert out["conv1"].shape == (2, 32, 32, 64) and out["res4f_out"].shape == (2, 4, 4, 1024)
    assert out["C5"].shape == (2, 2, 2, 2048) and out["P2"].shape == (2, 16, 16, 32)
    molded, metas, windows = model.mold_inputs(images)
    np.testing.assert_allclose(out["input_image"], molded)
    assert windows.tolist() == [[0, 0, 38, 64]] * 2 and metas.shape == (2, 1 + 3 + 3 + 4 + 1 + 3)

    expected = model.detect(images)
    molded_results = model.detect_molded(molded, metas)
    for i, image in enumerate(images):
        r = expected[i]
        assert len(r["class_ids"]) > 0
        rois, class_ids, scores, masks = model.unmold_detections(
            out["detections"][i], out["masks"][i], image.shape, molded[i].shape, windows[i])
        np.testing.assert_array_equal(class_ids, r["class_ids"])
        np.testing.assert_allclose(scores, r["scores"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rois, r["rois"], atol=1)
        assert masks.shape == r["masks"].shape == (48, 80, len(class_ids))
        assert np.mean(masks == r["masks"]) > 0.99
        for key in ("rois", "class_ids", "masks"):
            np.testing.assert_array_equal(molded_results[i][key], r[key])
    visualize.display_instances(images[0], *[expected[0][k] for k in ("rois", "masks")],
                                expected[0]["class_ids"], dataset.class_names,
                                expected[0]["scores"])
    _png(visualize.plt.gcf(), tmp_path / "detections.png")

    # what our architecture does not have: errors that say what to use
    with pytest.raises(ValueError, match="res4f_out"):
        km.get_layer("res4w_out")
    with pytest.raises(NotImplementedError, match="run_graph"):
        model.ancestor("ROI", "ROI/some_internal_op:0")
    with pytest.raises(TypeError, match="get_layer"):
        model.run_graph(images[:1], [("x", object())])
    with pytest.raises(ValueError, match="not exposed"):
        km.get_layer("rpn_conv_shared").output
    with pytest.raises(ValueError, match="gt_class_ids"):
        model.run_graph(images[:1], [("rois", "rois")])


def test_training_targets_and_rois(trained, tmp_path):
    import mrcnn.model as modellib

    model, dataset, config = trained
    image, _, gt_class_id, gt_bbox, gt_mask = modellib.load_image_gt(dataset, config, 3)
    out = model.run_graph([image], [
        ("rois", "rois"), ("target_class_ids", "target_class_ids"),
        ("target_bbox", "target_bbox"), ("target_mask", "target_mask"),
        ("rpn_match", "rpn_match"),
    ], gt_class_ids=gt_class_id, gt_boxes=gt_bbox, gt_masks=gt_mask, seed=1)
    ids = out["target_class_ids"][0]
    assert ids.shape == (32,) and out["target_mask"].shape == (1, 32, 28, 28)
    positive = np.where(ids > 0)[0]
    assert len(positive) > 0 and (positive == np.arange(len(positive))).all()  # first
    rois = utils.denorm_boxes(out["rois"][0], (64, 64))
    valid = np.any(out["rois"][0] != 0, axis=1)
    assert (np.where(valid)[0] == np.arange(valid.sum())).all()  # then negatives, padding
    iou = utils.compute_overlaps(rois[positive], gt_bbox)
    assert (iou.max(axis=1) >= 0.5).all()
    assert (ids[positive] == gt_class_id[np.argmax(iou, axis=1)]).all()
    std = np.asarray(config.BBOX_STD_DEV)
    roi_px = out["rois"][0, positive] * 63 + [0, 0, 1, 1]
    refined = utils.apply_box_deltas(roi_px, out["target_bbox"][0, positive] * std)
    np.testing.assert_allclose(refined, gt_bbox[np.argmax(iou, axis=1)], atol=1e-2)
    # the mask targets are mold_mask of the matched ground truth (the model's sampling)
    k = positive[0]
    g = int(np.argmax(iou[0]))
    np.testing.assert_array_equal(out["target_mask"][0, k],
                                  utils.mold_mask(gt_mask[:, :, g], config, roi_px[0]))
    assert not out["target_mask"][0, len(positive):].any()
    assert set(np.unique(out["rpn_match"])) <= {-1, 0, 1}
    assert np.sum(out["rpn_match"] != 0) == config.RPN_TRAIN_ANCHORS_PER_IMAGE

    refined_px = np.round(refined).astype(np.int32)
    fig = visualize.draw_rois(image, rois, np.pad(refined_px, [(0, 32 - len(positive)), (0, 0)]),
                              out["target_mask"][0], ids, dataset.class_names, limit=8)
    _png(fig, tmp_path / "rois.png")


def test_precision_recall_overlaps_and_differences(trained, tmp_path):
    import mrcnn.model as modellib

    model, dataset, config = trained
    image, _, gt_class_id, gt_bbox, gt_mask = modellib.load_image_gt(dataset, config, 0)
    r = model.detect([image])[0]
    ap, precisions, recalls, overlaps = utils.compute_ap(
        gt_bbox, gt_class_id, gt_mask, r["rois"], r["class_ids"], r["scores"], r["masks"])
    assert 0.0 <= ap <= 1.0 and overlaps.shape == (len(r["scores"]), 2)
    _png(visualize.plot_precision_recall(ap, precisions, recalls), tmp_path / "pr.png")
    _png(visualize.plot_overlaps(gt_class_id, r["class_ids"], r["scores"], overlaps,
                                 dataset.class_names), tmp_path / "overlaps.png")
    fig = visualize.display_differences(image, gt_bbox, gt_class_id, gt_mask, r["rois"],
                                        r["class_ids"], r["scores"], r["masks"],
                                        dataset.class_names, score_threshold=0.0)
    _png(fig, tmp_path / "differences.png")
    # matterport's score_threshold bounds the overlaps a match may use: the ground truth
    # matches itself (IoU 1) unless it is above 1
    same = (gt_bbox, gt_class_id, gt_mask, gt_bbox, gt_class_id, np.ones(2), gt_mask)
    assert (utils.compute_matches(*same, score_threshold=0.9)[0] > -1).all()
    assert (utils.compute_matches(*same, score_threshold=1.01)[0] == -1).all()
    canvas = visualize.draw_box(np.zeros((20, 30, 3), np.uint8), [2, 3, 10, 20], (255, 0, 0))
    assert canvas[2, 3:21, 0].all() and canvas[2:11, 3, 0].all() and not canvas[5, 10].any()


def test_weight_stats_trainable_layers_and_parallel_model(trained, capsys):
    from mrcnn.parallel_model import ParallelModel

    model, _, _ = trained
    layers = model.get_trainable_layers()
    named = model.keras_model.named_layers()
    assert [layer.name for layer in layers] == list(named)
    assert model.find_trainable_layer("mrcnn_mask") is named["mrcnn_mask"]
    conv1 = model.keras_model.get_layer("conv1")
    assert np.array_equal(conv1.get_weights()[0], named["conv1"].get_weights()[0])
    table = visualize.display_weight_stats(model)
    printed = capsys.readouterr().out
    assert table[0] == ["WEIGHT NAME", "SHAPE", "MIN", "MAX", "STD"]
    assert len(table) == 1 + sum(len(layer.weights) for layer in layers)
    assert "conv1/kernel" in printed and "(7, 7, 3, 64)" in printed
    kernel = named["conv1"].get_weights()[0]
    row = next(r for r in table if r[0].startswith("conv1/kernel"))
    assert float(row[2]) == pytest.approx(kernel.min(), abs=1e-4)

    with pytest.raises(ValueError, match="train.py"):
        ParallelModel(model.keras_model, 64)
    parallel = ParallelModel(model.keras_model, 1, devices=["/cpu:0"])
    assert parallel.strategy.num_replicas_in_sync == 1 and parallel.inner_model is model.keras_model
    assert len(parallel.weights) == len(model.keras_model.weights)
    assert all(np.array_equal(a, b) for a, b in
               zip(parallel.get_weights(), model.keras_model.get_weights()))
