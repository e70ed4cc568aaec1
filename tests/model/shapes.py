"""A handful of tiny synthetic images with exact masks, for the model's own tests."""

import numpy as np


def make_shapes_batch(num_images=4, size=128, max_instances=4, seed=0):
    """Images with a bright rectangle (class 1) and a dark disc (class 2) on grey, as a batch
    dict in the pipeline's format (docs/design.md)."""
    rng = np.random.default_rng(seed)
    images = np.full((num_images, size, size, 3), 128.0, np.float32)
    images += rng.normal(0, 4, images.shape).astype(np.float32)
    masks = np.zeros((num_images, max_instances, size, size), np.uint8)
    boxes = np.zeros((num_images, max_instances, 4), np.float32)
    classes = np.zeros((num_images, max_instances), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for i in range(num_images):
        # rectangle in the top half, disc in the bottom half: never overlapping
        h, w = rng.integers(size // 6, size // 3, 2)
        y, x = rng.integers(2, size // 2 - h), rng.integers(2, size - w - 2)
        masks[i, 0, y:y + h, x:x + w] = 1
        r = rng.integers(size // 10, size // 6)
        cy, cx = rng.integers(size // 2 + r, size - r - 1), rng.integers(r + 1, size - r - 1)
        masks[i, 1] = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r
        for k, value in ((0, 230.0), (1, 30.0)):
            images[i][masks[i, k] > 0] = value
            rows, cols = np.nonzero(masks[i, k])
            boxes[i, k] = [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]
            classes[i, k] = k + 1
    return {
        "image": np.clip(images, 0, 255),
        "gt_boxes": boxes,
        "gt_class_ids": classes,
        "gt_masks": masks,
        "num_instances": np.full((num_images,), 2, np.int32),
        "image_info": np.tile(np.array([[size, size, 1.0, 0.0]], np.float32), (num_images, 1)),
    }


def mask_iou(a, b):
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 0.0
