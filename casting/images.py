"""Image files as the annotations see them: one convention for EXIF orientation in training,
evaluation and serving.

A phone or camera often stores a portrait photo as a landscape bitmap plus an EXIF
orientation tag (values 1-8) that says how to turn it upright. Browsers apply the tag when
they show an image (since 2020), and so the web annotation tools (Supervisely, CVAT, Label
Studio) put their masks on the upright image; detectron2 and PIL's ``exif_transpose`` do
the same. So this project applies the tag everywhere: the tf.data pipeline, the COCO
evaluation and the endpoint decode the same upright pixels.

One exception, decided per image: when the annotation's size is the raw bitmap's and not
the upright one (a 90-degree tag, the sides swapped), the annotation was made on the raw
pixels, and the tag is ignored for that image. Tags that keep the size (flips, 180 degrees)
cannot tell, and follow the convention.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EXIF_ORIENTATION = 0x0112
# Tags 5-8 turn the image by 90 degrees: height and width swap.
SWAPS_SIDES = (5, 6, 7, 8)


def read_header(path: str) -> tuple[int, int, int]:
    """(raw height, raw width, EXIF orientation 1-8) from the file's header; 1 when the file
    has no usable tag. Raises what PIL raises for an unreadable file."""
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        try:
            orientation = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a damaged EXIF block: the pixels are still fine
            orientation = 1
    return height, width, orientation if 1 <= orientation <= 8 else 1


def upright_size(height: int, width: int, orientation: int) -> tuple[int, int]:
    return (width, height) if orientation in SWAPS_SIDES else (height, width)


def orientation_for(raw_height: int, raw_width: int, orientation: int,
                    height: int | None, width: int | None) -> int | None:
    """The orientation to apply so that the image has the annotation's size (height, width):
    the tag (the convention), or 1 when the annotation is on the raw bitmap; None when the
    annotation's size is neither. Without an annotation size, the tag."""
    if height is None or width is None:
        return orientation
    if (int(height), int(width)) == upright_size(raw_height, raw_width, orientation):
        return orientation
    if (int(height), int(width)) == (raw_height, raw_width):
        return 1
    return None


def orient_array(image: np.ndarray, orientation: int) -> np.ndarray:
    """An HxWxC array turned as EXIF ``orientation`` says (PIL's ``exif_transpose``)."""
    if orientation == 2:
        return image[:, ::-1]
    if orientation == 3:
        return image[::-1, ::-1]
    if orientation == 4:
        return image[::-1]
    if orientation == 5:
        return image.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(image, -1)
    if orientation == 7:
        return np.rot90(image.transpose(1, 0, 2), 2)
    if orientation == 8:
        return np.rot90(image, 1)
    return image


def orient_tensor(image: Any, orientation: Any) -> Any:
    """The same in TensorFlow, for a scalar int tensor ``orientation`` (graph mode)."""
    import tensorflow as tf

    def transpose(x):
        return tf.transpose(x, [1, 0, 2])

    branches = [
        lambda: image,  # 0 (not a tag): as 1
        lambda: image,
        lambda: tf.reverse(image, [1]),
        lambda: tf.reverse(image, [0, 1]),
        lambda: tf.reverse(image, [0]),
        lambda: transpose(image),
        lambda: tf.image.rot90(image, 3),  # 90 degrees clockwise
        lambda: tf.reverse(transpose(image), [0, 1]),
        lambda: tf.image.rot90(image, 1),  # 90 degrees counter-clockwise
    ]
    index = tf.clip_by_value(tf.cast(orientation, tf.int32), 0, 8)
    return tf.switch_case(index, branches)


def read_rgb(path: str, orientation: int = 1) -> np.ndarray:
    """The file's pixels as uint8 RGB [H, W, 3], turned by ``orientation`` (a record's)."""
    from PIL import Image

    with Image.open(path) as im:
        image = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(orient_array(image, orientation))


__all__ = ["read_header", "upright_size", "orientation_for", "orient_array", "orient_tensor",
           "read_rgb", "EXIF_ORIENTATION"]
