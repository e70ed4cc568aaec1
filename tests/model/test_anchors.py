"""Anchor counts, positions and order."""

import math

import numpy as np
import pytest

from casting.model.anchors import feature_shapes, generate_anchors


def test_counts():
    anchors = generate_anchors(128, (16, 32, 64, 128, 256), (0.5, 1, 2), (4, 8, 16, 32, 64))
    # 32^2 + 16^2 + 8^2 + 4^2 + 2^2 positions, 3 ratios each
    assert anchors.shape == ((1024 + 256 + 64 + 16 + 4) * 3, 4)
    assert feature_shapes(512, (4, 8, 16, 32, 64)) == [(128, 128), (64, 64), (32, 32), (16, 16),
                                                        (8, 8)]


def test_positions_and_order():
    a = generate_anchors(128, (16, 32, 64, 128, 256), (0.5, 1, 2), (4, 8, 16, 32, 64))
    h, w = 16 / math.sqrt(0.5), 16 * math.sqrt(0.5)
    # first position (0, 0) of P2 is centred on (2, 2); ratio 0.5 is tall, 2 is wide
    assert a[0] == pytest.approx([2 - h / 2, 2 - w / 2, 2 + h / 2, 2 + w / 2])
    assert a[1] == pytest.approx([-6, -6, 10, 10])
    assert a[2] == pytest.approx([2 - w / 2, 2 - h / 2, 2 + w / 2, 2 + h / 2])
    # next position along x is 4 px to the right; the next row starts after 32 positions
    assert a[3] == pytest.approx(a[0] + [0, 4, 0, 4])
    assert a[32 * 3] == pytest.approx(a[0] + [4, 0, 4, 0])
    # first anchor of P3: stride 8, scale 32, centred on (4, 4)
    p3 = a[1024 * 3 + 1]
    assert p3 == pytest.approx([4 - 16, 4 - 16, 4 + 16, 4 + 16])
    centres = (a[:, :2] + a[:, 2:]) / 2
    assert np.all(centres >= 0) and np.all(centres <= 128)
