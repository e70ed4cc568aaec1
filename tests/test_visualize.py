"""casting.visualize: overlays change exactly the pixels they should, and encode as PNG."""

import io

import numpy as np
import pytest
from PIL import Image

from casting import visualize


def _scene():
    image = np.full((60, 80, 3), 100, np.uint8)
    mask = np.zeros((1, 60, 80), bool)
    mask[0, 20:40, 30:50] = True
    return image, mask


def test_mask_blends_class_colour_and_leaves_far_pixels_alone():
    image, mask = _scene()
    out = visualize.draw_detections(image, masks=mask, class_ids=[2], show_labels=False,
                                    box_format="xyxy", boxes=[[30, 20, 50, 40]])
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(image, np.full((60, 80, 3), 100, np.uint8)), "input modified"
    color = np.array(visualize.class_color(2), float)
    inside = out[30, 40].astype(float)
    expected = 100 * (1 - 0.45) + color * 0.45
    assert np.allclose(inside, expected, atol=1)
    assert np.array_equal(out[5, 5], [100, 100, 100])  # far from everything
    # box outline drawn in the class colour at its left edge (x=30) outside the mask rows
    assert np.array_equal(out[20, 30], visualize.class_color(2)) or np.array_equal(
        out[30, 30], visualize.class_color(2)
    )


def test_yxyx_boxes_and_labels_drawn():
    image = np.zeros((100, 120, 3), np.uint8)
    out = visualize.draw_detections(
        image, boxes=[[40, 10, 90, 70]], class_ids=[1], scores=[0.87],
        class_names=["holes"], box_format="yxyx",
    )
    color = visualize.class_color(1)
    # the left edge of a (y1=40, x1=10, y2=90, x2=70) box is at column 10, rows 40..89
    assert np.array_equal(out[60, 10], color)
    assert np.array_equal(out[60, 69], color)
    assert np.array_equal(out[60, 40], [0, 0, 0])  # interior untouched (no mask)
    # a label box sits above the box: coloured pixels above row 40
    assert (out[:40] != 0).any()


def test_no_detections_returns_copy_and_grayscale_input():
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    out = visualize.draw_detections(gray)
    assert out.shape == (6, 8, 3)
    assert np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)


def test_mismatched_inputs_raise():
    image, mask = _scene()
    with pytest.raises(ValueError):
        visualize.draw_detections(image, masks=np.zeros((1, 10, 10), bool))
    with pytest.raises(ValueError):
        visualize.draw_detections(image, boxes=[[0, 0, 5, 5]], masks=np.zeros((2, 60, 80), bool))
    with pytest.raises(ValueError):
        visualize.draw_detections(image, boxes=[[0, 0, 5, 5]], class_ids=[1, 2])
    with pytest.raises(ValueError):
        visualize.draw_detections(image, boxes=[[0, 0, 5, 5]], box_format="xywh")


def test_png_bytes_and_save(tmp_path):
    image, mask = _scene()
    out = visualize.draw_detections(image, masks=mask, class_ids=[1], scores=[0.5],
                                    class_names=["a"])
    data = visualize.to_png_bytes(out)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), out)
    path = tmp_path / "o.png"
    visualize.save_png(out, path)
    assert np.array_equal(np.asarray(Image.open(path)), out)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_boxes_out_of_range_are_clipped():
    out = visualize.draw_detections(np.zeros((20, 20, 3), np.uint8),
                                    boxes=[[-5, -5, 40, 40]], class_ids=[3], scores=[1.0])
    assert np.array_equal(out[18, 0], visualize.class_color(3))
    assert np.array_equal(out[18, 19], visualize.class_color(3))
    assert np.array_equal(out[19, 10], visualize.class_color(3))
