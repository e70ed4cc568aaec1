"""EXIF orientation: one convention in the training pipeline, the evaluation and the endpoint
(casting.images). A photo stored as a landscape bitmap with a "turn 90 degrees" tag is
annotated, in browser-based tools, on the upright image."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from casting.config import Config
from casting.data import load_dataset, read_dataset
from casting.data.pipeline import make_dataset
from casting.evaluation import load_image
from casting.images import orient_array, orient_tensor, read_header
from casting.inference import decode_image


def _jpeg_bytes(array, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def _pattern(height, width):
    """A picture with no symmetry: a gradient and a bright block near the top-left."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(y * 255 // height), (x * 255 // width), ((x + 2 * y) % 256)], -1)
    image[2:10, 3:20] = 255
    return image.astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_numpy_and_tensorflow_turn_as_pil_exif_transpose(orientation):
    with Image.open(io.BytesIO(_jpeg_bytes(_pattern(24, 40), orientation))) as im:
        raw = np.asarray(im.convert("RGB"))
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(orient_array(raw, orientation), want)
    turned = tf.function(orient_tensor)(tf.constant(raw), tf.constant(orientation))
    np.testing.assert_array_equal(turned.numpy(), want)


def _sly_project(root, raw, orientation, ann_size, box):
    """One JPEG (raw bitmap + tag) and a rectangle at `box` (x1, y1, x2, y2) on an image of
    the annotation's size `ann_size` (height, width)."""
    os.makedirs(os.path.join(root, "ds", "img"))
    os.makedirs(os.path.join(root, "ds", "ann"))
    with open(os.path.join(root, "ds", "img", "photo.jpg"), "wb") as fh:
        fh.write(_jpeg_bytes(raw, orientation))
    x1, y1, x2, y2 = box
    ann = {"size": {"height": ann_size[0], "width": ann_size[1]}, "tags": [], "objects": [
        {"classTitle": "chipping", "geometryType": "rectangle", "tags": [],
         "points": {"exterior": [[x1, y1], [x2, y2]], "interior": []}}]}
    with open(os.path.join(root, "ds", "ann", "photo.jpg.json"), "w") as fh:
        json.dump(ann, fh)
    return os.path.join(root, "ds", "img", "photo.jpg")


def test_a_tagged_photo_is_the_same_upright_image_in_training_evaluation_and_serving(tmp_path):
    raw = _pattern(40, 64)  # stored landscape, tag 6: upright it is 64 high, 40 wide
    path = _sly_project(str(tmp_path), raw, 6, (64, 40), (5, 30, 20, 50))
    assert read_header(path) == (40, 64, 6)
    records = load_dataset(str(tmp_path))
    record = records.records[0]
    assert (record.height, record.width, record.orientation) == (64, 40, 6)
    with open(path, "rb") as fh:
        served = decode_image(fh.read())  # the endpoint's decoding
    evaluated = load_image(record.image_path, record.orientation)
    np.testing.assert_array_equal(evaluated, served)
    assert evaluated.shape == (64, 40, 3)
    cfg = Config(class_names=tuple(records.class_names), image_size=64, max_gt_instances=2,
                 batch_size=1)
    batch = next(iter(make_dataset(records, cfg, training=False)))
    trained = batch["image"].numpy()[0]
    assert trained.shape == (64, 64, 3) and not trained[:, 40:].any()  # padding on the right
    # exactly TensorFlow's decoding of the file, turned by the tag
    tf_decoded = tf.io.decode_jpeg(tf.io.read_file(path), channels=3).numpy()
    np.testing.assert_array_equal(trained[:, :40], orient_array(tf_decoded, 6))
    # and the endpoint's upright image, but for the two JPEG decoders' rounding at edges
    difference = np.abs(trained[:, :40] - served.astype(np.float32))
    assert difference.mean() < 1.5, difference.mean()
    for wrong in (raw.transpose(1, 0, 2), orient_array(raw, 8)):  # other turns are far off
        assert np.abs(trained[:, :40] - wrong.astype(np.float32)).mean() > 20
    mask = batch["gt_masks"].numpy()[0, 0]
    assert mask[30:51, 5:21].all() and mask.sum() == 21 * 16  # on the upright image


def test_annotated_on_the_raw_bitmap_ignores_the_tag_and_other_sizes_are_problems(tmp_path):
    raw = _pattern(40, 64)
    _sly_project(str(tmp_path / "raw"), raw, 6, (40, 64), (5, 5, 20, 20))
    record = load_dataset(str(tmp_path / "raw")).records[0]
    assert (record.height, record.width, record.orientation) == (40, 64, 1)
    np.testing.assert_array_equal(load_image(record.image_path, record.orientation).shape,
                                  (40, 64, 3))

    _sly_project(str(tmp_path / "bad"), raw, 6, (50, 50), (5, 5, 20, 20))
    _, report = read_dataset(str(tmp_path / "bad"))
    assert not report.ok
    assert "image is 40x64 (HxW) (64x40 upright, EXIF orientation 6) but the annotation " \
           "says 50x50" in report.text()
