"""The tf.data pipeline: batch contract, alignment under augmentation, sharding."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from casting.config import Config
from casting.data.pipeline import make_dataset, preprocess_image, truncation_stats
from casting.data.records import DatasetRecords, Instance, Record


def _shapes(h, w, k):
    """k non-overlapping rectangles/L-shapes on an h x w canvas."""
    masks = []
    for i in range(k):
        m = np.zeros((h, w), bool)
        y, x = 6 + (i // 2) * (h // 3), 6 + (i % 2) * (w // 2)
        m[y:y + h // 4, x:x + w // 5] = True
        m[y:y + 4, x:x + w // 3] = True  # an L, so rotations are distinguishable
        masks.append(m)
    return masks


def _make_ds(tmp_path, n=5, h=96, w=128, k=3, crowd_last=False, heights=None):
    records = []
    for i in range(n):
        hh = heights[i] if heights else h
        masks = _shapes(hh, w, k)
        img = np.zeros((hh, w, 3), np.uint8)
        for m in masks:
            img[m] = 255
        path = os.path.join(tmp_path, f"im{i}.png")
        Image.fromarray(img).save(path)
        insts = [Instance(1 + j % 2, m, iscrowd=crowd_last and j == k - 1)
                 for j, m in enumerate(masks)]
        records.append(Record(f"im{i}", path, hh, w, instances=insts))
    return DatasetRecords(("a", "b"), records)


def _check_batch_contract(b, size, n_max):
    assert b["image"].dtype == tf.float32 and b["image"].shape[1:] == (size, size, 3)
    assert b["gt_boxes"].dtype == tf.float32 and b["gt_boxes"].shape[1:] == (n_max, 4)
    assert b["gt_class_ids"].dtype == tf.int32 and b["gt_class_ids"].shape[1:] == (n_max,)
    assert b["gt_masks"].dtype == tf.uint8 and b["gt_masks"].shape[1:] == (n_max, size, size)
    assert b["num_instances"].dtype == tf.int32 and b["image_info"].dtype == tf.float32
    boxes, masks = b["gt_boxes"].numpy(), b["gt_masks"].numpy()
    ids, nums = b["gt_class_ids"].numpy(), b["num_instances"].numpy()
    for i, n in enumerate(nums):
        assert (ids[i, :n] > 0).all() and (ids[i, n:] == 0).all()
        assert not masks[i, n:].any() and not boxes[i, n:].any()
        for j in range(n):
            ys, xs = np.nonzero(masks[i, j])
            assert list(boxes[i, j]) == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]


def test_eval_batches_exact(tmp_path):
    ds = _make_ds(str(tmp_path), n=5)
    cfg = Config(class_names=("a", "b"), image_size=64, max_gt_instances=4, batch_size=2)
    batches = list(make_dataset(ds, cfg, training=False))
    assert [int(b["image"].shape[0]) for b in batches] == [2, 2, 1]  # partial batch kept
    b = batches[0]
    _check_batch_contract(b, 64, 4)
    np.testing.assert_allclose(b["image_info"].numpy()[0], [96, 128, 0.5, 0])
    assert list(b["num_instances"].numpy()) == [3, 3]
    assert list(b["gt_class_ids"].numpy()[0]) == [1, 2, 1, 0]
    img = b["image"].numpy()[0]
    assert not img[48:].any()  # zero padding at the bottom (96 * 0.5 = 48 rows)
    # masks are the records' masks downscaled: compare with a 2x2 block vote
    m0 = ds.records[0].instances[0].mask.reshape(48, 2, 64, 2).mean(axis=(1, 3)) >= 0.5
    np.testing.assert_array_equal(b["gt_masks"].numpy()[0, 0, :48], m0)
    # inference preprocessing resizes identically
    raw = np.asarray(Image.open(ds.records[0].image_path))
    pre, scale = preprocess_image(raw, 64)
    assert isinstance(pre, np.ndarray) and pre.shape == (64, 64, 3) and scale == 0.5
    np.testing.assert_allclose(pre, img, atol=1e-3)
    # deterministic order, no repeat
    again = list(make_dataset(ds, cfg, training=False))
    np.testing.assert_array_equal(again[2]["image"].numpy(), batches[2]["image"].numpy())


def test_augmentation_keeps_masks_boxes_and_image_aligned(tmp_path):
    ds = _make_ds(str(tmp_path), n=4, h=128, w=128)
    cfg = Config(class_names=("a", "b"), image_size=64, max_gt_instances=4, batch_size=2,
                 seed=3)
    data = make_dataset(ds, cfg, training=True)
    seen_changed = False
    for b in data.take(8):
        _check_batch_contract(b, 64, 4)
        imgs, masks, nums = b["image"].numpy(), b["gt_masks"].numpy(), b["num_instances"]
        for i, n in enumerate(nums.numpy()):
            union = masks[i, :n].any(axis=0)
            bright = imgs[i].mean(axis=-1) > 127
            iou = (union & bright).sum() / (union | bright).sum()
            assert iou > 0.8, iou
            for j in range(n):
                assert imgs[i][masks[i, j] > 0].mean() > 150
            base = np.zeros((64, 64), bool)
            for inst in ds.records[0].instances:
                base |= inst.mask.reshape(64, 2, 64, 2).mean(axis=(1, 3)) >= 0.5
            seen_changed |= not np.array_equal(union, base)
    assert seen_changed  # augmentation actually moved things


def test_training_is_seeded_and_repeats(tmp_path):
    ds = _make_ds(str(tmp_path), n=3, h=64, w=64, k=2)
    cfg = Config(class_names=("a", "b"), image_size=64, max_gt_instances=2, batch_size=2)
    run = lambda c: np.concatenate(  # noqa: E731
        [b["image"].numpy() for b in make_dataset(ds, c, training=True).take(4)])
    first = run(cfg)
    assert first.shape[0] == 8  # 3 images repeated
    np.testing.assert_array_equal(first, run(cfg))
    assert not np.array_equal(first, run(cfg.replace(seed=cfg.seed + 1)))


def test_skip_resumes_the_stream_of_an_uninterrupted_run(tmp_path):
    """A run resumed at step s (skip = s x batch) sees the images, order and augmentation
    that an uninterrupted run sees from step s on, across reshuffled passes."""
    ds = _make_ds(str(tmp_path), n=3, h=64, w=64, k=2)
    cfg = Config(class_names=("a", "b"), image_size=64, max_gt_instances=2, batch_size=2)
    whole = [b for b in make_dataset(ds, cfg, training=True).take(6)]
    later = [b for b in make_dataset(ds, cfg, training=True, skip=2 * 2).take(4)]
    for a, b in zip(whole[2:], later):
        np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
        np.testing.assert_array_equal(a["gt_masks"].numpy(), b["gt_masks"].numpy())
    assert not np.array_equal(whole[0]["image"].numpy(), later[0]["image"].numpy())


def test_crowd_excluded_and_truncation_counted(tmp_path, caplog):
    ds = _make_ds(str(tmp_path), n=2, h=64, w=64, k=4, crowd_last=True)
    cfg = Config(class_names=("a", "b"), image_size=64, max_gt_instances=2, batch_size=2)
    before = truncation_stats["instances_dropped"]
    b = next(iter(make_dataset(ds, cfg, training=False)))
    assert list(b["num_instances"].numpy()) == [2, 2]  # 3 non-crowd, first 2 kept
    assert list(b["gt_class_ids"].numpy()[0]) == [1, 2]
    assert truncation_stats["instances_dropped"] - before == 2


def test_sharding_covers_every_image_once(tmp_path):
    heights = [40, 44, 48, 52, 56]
    ds = _make_ds(str(tmp_path), n=5, w=64, k=1, heights=heights)
    cfg = Config(class_names=("a", "b"), image_size=64, max_gt_instances=2, batch_size=2)
    seen = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid,
                                         num_replicas_in_sync=2)
        part = [int(h) for b in make_dataset(ds, cfg, training=False, input_context=ctx)
                for h in b["image_info"].numpy()[:, 0]]
        assert part
        seen += part
    assert sorted(seen) == heights


def test_empty_image_and_preprocess_tensor(tmp_path):
    path = str(tmp_path / "e.png")
    Image.fromarray(np.full((30, 20, 3), 9, np.uint8)).save(path)
    ds = DatasetRecords(("a",), [Record("e", path, 30, 20, instances=[])])
    cfg = Config(class_names=("a",), image_size=64, max_gt_instances=3, batch_size=1)
    b = next(iter(make_dataset(ds, cfg, training=True)))
    assert int(b["num_instances"][0]) == 0 and not b["gt_masks"].numpy().any()
    out, scale = preprocess_image(tf.zeros([30, 20, 1], tf.uint8), 64)
    assert out.shape == (64, 64, 3) and abs(float(scale) - 64 / 30) < 1e-6


def test_scale_jitter_and_crops_keep_masks_boxes_and_image_aligned(tmp_path):
    """train_scale_range / train_crop_size: training batches are crops of the crop size
    of an image resized by a random scale, masks and boxes cut with the image; the
    evaluation batches stay whole at image_size."""
    ds = _make_ds(str(tmp_path), n=4, h=128, w=128)
    cfg = Config(class_names=("a", "b"), image_size=128, max_gt_instances=4, batch_size=2,
                 seed=5, augment=False, train_crop_size=64, train_scale_range=(0.5, 1.5),
                 train_crop_min_visible=0.0)  # every visible part kept: bright == labelled
    bright_fractions, counts = [], []
    for b in make_dataset(ds, cfg, training=True).take(12):
        _check_batch_contract(b, 64, 4)  # boxes are the masks' boxes, padding is empty
        imgs, masks = b["image"].numpy(), b["gt_masks"].numpy()
        for i, n in enumerate(b["num_instances"].numpy()):
            union = masks[i, :n].any(axis=0)
            bright = imgs[i].mean(axis=-1) > 127
            if union.any() or bright.any():
                assert (union & bright).sum() / (union | bright).sum() > 0.8
            counts.append(n)
            bright_fractions.append(bright.mean())
    # the scale moves: the same shapes fill different shares of the window
    assert max(bright_fractions) - min(bright_fractions) > 0.1
    assert min(counts) < 3  # some crops cut instances away entirely; they are dropped
    # the same seed gives the same crops; evaluation batches are whole images
    first = next(iter(make_dataset(ds, cfg, training=True)))["image"].numpy()
    again = next(iter(make_dataset(ds, cfg, training=True)))["image"].numpy()
    np.testing.assert_array_equal(first, again)
    _check_batch_contract(next(iter(make_dataset(ds, cfg, training=False))), 128, 4)


def test_crop_and_scale_settings_are_checked():
    with pytest.raises(ValueError, match="train_crop_size"):
        Config(image_size=128, train_crop_size=192)
    with pytest.raises(ValueError, match="train_crop_size"):
        Config(image_size=128, train_crop_size=100)
    with pytest.raises(ValueError, match="train_scale_range"):
        Config(train_scale_range=(1.2, 0.8))


def test_crops_drop_instances_cut_below_the_visible_fraction():
    """random_crop: an instance cut to less than min_visible of its area is emptied (the
    pipeline then drops it); one kept is exactly the crop of its mask, aligned with the
    image crop."""
    from casting.data.augment import random_crop

    masks = np.zeros((100, 100, 2), np.float32)
    masks[35:75, 35:75, 0] = 1.0  # 1600 px
    image = np.repeat(np.arange(100, dtype=np.float32)[None, :, None], 100, 0)
    image = np.repeat(image + 100 * np.arange(100, dtype=np.float32)[:, None, None], 3, 2)
    kept = dropped = 0
    for s in range(40):
        crop_img, crop_masks = random_crop(tf.constant(image), tf.constant(masks), 50,
                                           tf.constant([s, 3], tf.int64), 0.0, 0.25)
        crop_img, crop_masks = crop_img.numpy(), crop_masks.numpy()
        oy, ox = int(crop_img[0, 0, 0]) // 100, int(crop_img[0, 0, 0]) % 100
        window = masks[oy:oy + 50, ox:ox + 50, 0]
        assert crop_img.shape == (50, 50, 3) and crop_img[0, 0, 0] == 100 * oy + ox
        if window.sum() >= 0.25 * 1600:
            np.testing.assert_array_equal(crop_masks[..., 0], window)
            kept += 1
        else:
            assert not crop_masks[..., 0].any()
            dropped += window.sum() > 0
    assert kept and dropped  # both cases happened


def test_native_scale_crops_find_a_small_object_in_a_large_frame(tmp_path):
    """train_native_scale: a 256-px frame is not shrunk to image_size 64; crops of 64 keep
    a 12x12 object at its own 144 px. With train_crop_object_fraction 1 every crop holds
    it; with 0 most crops of the frame hold nothing."""
    m = np.zeros((256, 256), bool)
    m[200:212, 30:42] = True
    img = np.zeros((256, 256, 3), np.uint8)
    img[m] = 255
    path = os.path.join(str(tmp_path), "frame.png")
    Image.fromarray(img).save(path)
    ds = DatasetRecords(("a",), [Record("f", path, 256, 256, instances=[Instance(1, m)])])

    def crops(fraction):
        cfg = Config(class_names=("a",), image_size=64, max_gt_instances=2, batch_size=2,
                     seed=1, augment=False, train_native_scale=True,
                     train_crop_object_fraction=fraction)
        return list(make_dataset(ds, cfg, training=True).take(8))

    for b in crops(1.0):
        _check_batch_contract(b, 64, 2)
        np.testing.assert_array_equal(b["num_instances"].numpy(), [1, 1])
        np.testing.assert_array_equal(b["gt_masks"].numpy()[:, 0].sum(axis=(1, 2)), [144, 144])
    assert sum(int(b["num_instances"].numpy().sum()) for b in crops(0.0)) < 8
    with pytest.raises(ValueError, match="train_crop_min_visible"):
        Config(train_crop_min_visible=1.5)
