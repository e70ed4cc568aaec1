"""Feeding a matterport `utils.Dataset` to our model: matterport's image helpers
(`mold_image`, `compose_image_meta`, `load_image_gt`...), augmentation by a callable or an
imgaug augmenter, and the generator / tf.data pipeline that `MaskRCNN.train` uses. Every
name is also reachable as `mrcnn.model.<name>`, where matterport's code looks for it."""

from __future__ import annotations

import numpy as np

from mrcnn import utils

IMGAUG_NUMPY2_NOTE = (
    "imgaug (last release 0.4.0, 2020) uses NumPy aliases removed in NumPy 2 (np.bool, "
    "np.sctypes), so it usually fails to import next to TensorFlow 2.21, which needs NumPy 2. "
    "Pass a callable instead: augmentation(image, masks) -> (image, masks), with image "
    "[H, W, 3] uint8 and masks [H, W, N] bool."
)


def imgaug_status() -> tuple[bool, str]:
    """(importable, message) for imgaug, with the reason it usually is not."""
    try:
        import imgaug  # noqa: F401
    except Exception as exc:  # ImportError, AttributeError on NumPy 2
        return False, f"imgaug cannot be imported ({type(exc).__name__}: {exc}). {IMGAUG_NUMPY2_NOTE}"
    return True, "imgaug imported"


# ------------------------------------------------------------------------------------------
# Image helpers with matterport's names
# ------------------------------------------------------------------------------------------
def mold_image(images, config):
    """RGB -> RGB minus the mean pixel, float32 (what the network sees)."""
    return np.asarray(images).astype(np.float32) - np.asarray(config.MEAN_PIXEL, np.float32)


def unmold_image(normalized_images, config):
    return (np.asarray(normalized_images) + np.asarray(config.MEAN_PIXEL)).astype(np.uint8)


def compose_image_meta(image_id, original_image_shape, image_shape, window, scale,
                       active_class_ids):
    return np.array(
        [image_id] + list(original_image_shape) + list(image_shape) + list(window) + [scale]
        + list(active_class_ids)
    )


def parse_image_meta(meta):
    meta = np.asarray(meta)
    return {
        "image_id": meta[:, 0].astype(np.int32),
        "original_image_shape": meta[:, 1:4].astype(np.int32),
        "image_shape": meta[:, 4:7].astype(np.int32),
        "window": meta[:, 7:11].astype(np.int32),
        "scale": meta[:, 11].astype(np.float32),
        "active_class_ids": meta[:, 12:].astype(np.int32),
    }


def _augment(image, masks, augmentation):
    """Apply `augmentation` to the image and its [H, W, N] masks together."""
    module = type(augmentation).__module__ or ""
    if module.startswith("imgaug"):
        import imgaug

        mask_augmenters = {"Sequential", "SomeOf", "OneOf", "Sometimes", "Fliplr", "Flipud",
                           "CropAndPad", "Affine", "PiecewiseAffine"}

        def hook(images, augmenter, parents, default):
            return augmenter.__class__.__name__ in mask_augmenters

        det = augmentation.to_deterministic()
        shape, mshape = image.shape, masks.shape
        image = det.augment_image(image)
        masks = det.augment_image(masks.astype(np.uint8),
                                  hooks=imgaug.HooksImages(activator=hook))
        if image.shape != shape or masks.shape != mshape:
            raise ValueError("augmentation changed the image or mask shape")
        return image, masks.astype(bool)
    if not callable(augmentation):
        ok, message = imgaug_status()
        raise TypeError(
            f"augmentation {augmentation!r} is neither callable nor an imgaug augmenter. "
            + (message if not ok else "Pass a callable (image, masks) -> (image, masks).")
        )
    out = augmentation(image, masks)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("an augmentation callable must return (image, masks)")
    image, masks = np.asarray(out[0]), np.asarray(out[1])
    if masks.ndim == 2:
        masks = masks[:, :, None]
    if image.shape[:2] != masks.shape[:2]:
        raise ValueError(
            f"augmentation returned image {image.shape[:2]} and masks {masks.shape[:2]}: "
            "they must stay the same size"
        )
    return image, masks.astype(bool)


def load_image_gt(dataset, config, image_id, augmentation=None, use_mini_mask=False):
    """(image, image_meta, class_ids, boxes, masks) for one dataset image, resized and padded
    to the model's square input (masks [S, S, N] bool, boxes in those pixels)."""
    image = dataset.load_image(image_id)
    masks, class_ids = dataset.load_mask(image_id)
    masks = np.asarray(masks).astype(bool)
    if masks.ndim == 2:
        masks = masks[:, :, None]
    class_ids = np.asarray(class_ids, dtype=np.int32).reshape(-1)
    original_shape = image.shape
    if augmentation is not None:
        image, masks = _augment(image, masks, augmentation)
    side = int(config.IMAGE_SHAPE[0])
    image, window, scale, padding, crop = utils.resize_image(image, max_dim=side)
    masks = utils.resize_mask(masks, scale, padding, crop) if masks.shape[-1] else np.zeros(
        (side, side, 0), bool)
    keep = np.where(np.sum(masks, axis=(0, 1)) > 0)[0]
    masks, class_ids = masks[:, :, keep], class_ids[keep]
    boxes = utils.extract_bboxes(masks)
    active = np.zeros([dataset.num_classes], dtype=np.int32)
    source_ids = dataset.source_class_ids[dataset.image_info[image_id]["source"]]
    active[source_ids] = 1
    meta = compose_image_meta(image_id, original_shape, image.shape, window, scale, active)
    return image, meta, class_ids, boxes, masks


# ------------------------------------------------------------------------------------------
# Feeding a utils.Dataset to the model
# ------------------------------------------------------------------------------------------
def _example(dataset, image_id, side, max_instances, num_classes, augmentation, rng):
    image = np.asarray(dataset.load_image(image_id))
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[:, :, :3]
    masks, class_ids = dataset.load_mask(image_id)
    masks = np.asarray(masks).astype(bool)
    if masks.ndim == 2:
        masks = masks[:, :, None]
    class_ids = np.asarray(class_ids, dtype=np.int32).reshape(-1)
    if masks.shape[-1] != class_ids.shape[0]:
        raise ValueError(
            f"load_mask({image_id}) returned {masks.shape[-1]} masks but {class_ids.shape[0]} "
            "class ids"
        )
    if class_ids.size and (class_ids.min() < 0 or class_ids.max() >= num_classes):
        raise ValueError(
            f"load_mask({image_id}) returned class ids {sorted(set(class_ids.tolist()))}; the "
            f"model has NUM_CLASSES = {num_classes} (ids 1..{num_classes - 1}, 0 = background)"
        )
    height, width = image.shape[:2]
    if masks.shape[-1] and masks.shape[:2] != (height, width):
        raise ValueError(
            f"load_mask({image_id}) returned masks of {masks.shape[:2]} for an image of "
            f"{(height, width)}"
        )
    if augmentation is not None:
        image, masks = _augment(image, masks, augmentation)
        height, width = image.shape[:2]
    resized, _window, scale, padding, _ = utils.resize_image(image.astype(np.uint8), max_dim=side)
    if masks.shape[-1]:
        masks = utils.resize_mask(masks, scale, padding)
    else:
        masks = np.zeros((side, side, 0), bool)
    keep = np.where((np.sum(masks, axis=(0, 1)) > 0) & (class_ids > 0))[0]
    if keep.size > max_instances:
        keep = np.sort(rng.choice(keep, max_instances, replace=False))
    masks, class_ids = masks[:, :, keep], class_ids[keep]
    n = len(keep)
    boxes = utils.extract_bboxes(masks).astype(np.float32) if n else np.zeros((0, 4), np.float32)
    out_boxes = np.zeros((max_instances, 4), np.float32)
    out_ids = np.zeros((max_instances,), np.int32)
    out_masks = np.zeros((max_instances, side, side), np.uint8)
    out_boxes[:n] = boxes
    out_ids[:n] = class_ids
    out_masks[:n] = np.transpose(masks, (2, 0, 1))
    return {
        "image": resized.astype(np.float32),
        "gt_boxes": out_boxes,
        "gt_class_ids": out_ids,
        "gt_masks": out_masks,
        "num_instances": np.int32(n),
        "image_info": np.array([height, width, scale, 0], np.float32),
    }


def data_generator(dataset, config, shuffle=True, augmentation=None, batch_size=None,
                   seed=None):
    """An endless generator of single-image dicts (docs/design.md "Batches" before
    batching) from a prepared `utils.Dataset`. Images without instances are skipped, as
    matterport does. Without `seed`, one is drawn from NumPy's global RNG, so that
    `np.random.seed(...)` makes the order repeatable (matterport shuffles with it too)."""
    side = int(config.IMAGE_SHAPE[0])
    max_instances = int(config.MAX_GT_INSTANCES)
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    ids = np.copy(dataset.image_ids)
    if len(ids) == 0:
        raise ValueError("the dataset has no images; did you call prepare()?")
    while True:
        if shuffle:
            rng.shuffle(ids)
        produced = 0
        for image_id in ids:
            ex = _example(dataset, int(image_id), side, max_instances, int(config.NUM_CLASSES),
                          augmentation, rng)
            if ex["num_instances"] == 0:
                continue
            produced += 1
            yield ex
        if produced == 0:
            raise ValueError("no image of the dataset has any instance (load_mask returned none)")


def make_tf_dataset(dataset, config, shuffle=True, augmentation=None, seed=None):
    """`data_generator` as a batched tf.data.Dataset of the model's batch dicts."""
    import tensorflow as tf

    side = int(config.IMAGE_SHAPE[0])
    n = int(config.MAX_GT_INSTANCES)
    signature = {
        "image": tf.TensorSpec((side, side, 3), tf.float32),
        "gt_boxes": tf.TensorSpec((n, 4), tf.float32),
        "gt_class_ids": tf.TensorSpec((n,), tf.int32),
        "gt_masks": tf.TensorSpec((n, side, side), tf.uint8),
        "num_instances": tf.TensorSpec((), tf.int32),
        "image_info": tf.TensorSpec((4,), tf.float32),
    }
    ds = tf.data.Dataset.from_generator(
        lambda: data_generator(dataset, config, shuffle, augmentation, seed=seed),
        output_signature=signature,
    )
    return ds.batch(int(config.BATCH_SIZE), drop_remainder=True).prefetch(2)
