"""Repeat-factor sampling: the factors by hand, the passes, and the pipeline that uses them."""

import math

import numpy as np
import pytest
from PIL import Image

from casting.config import Config
from casting.data.pipeline import make_dataset
from casting.data.records import DatasetRecords, Instance, Record
from casting.data.sampling import class_image_fractions, index_stream, one_pass, repeat_factors


def _records(tmp_path, classes_per_image, size=32):
    """One image per entry, each with one small square instance per listed class id; the
    image's grey level is its index, so a batch tells which image it came from."""
    records = []
    for i, classes in enumerate(classes_per_image):
        path = str(tmp_path / f"im{i}.png")
        Image.fromarray(np.full((size, size, 3), 10 * i, np.uint8)).save(path)
        instances = []
        for k, cid in enumerate(classes):
            mask = np.zeros((size, size), bool)
            mask[2 + 6 * k:6 + 6 * k, 2:6] = True
            instances.append(Instance(cid, mask))
        records.append(Record(f"im{i}", path, size, size, instances=instances))
    return DatasetRecords(("common", "rare"), records)


# class 1 ("common") in 4 of 4 images, class 2 ("rare") in 1 of 4
LAYOUT = [[1], [1], [1], [1, 2]]


def test_factors_by_hand(tmp_path):
    ds = _records(tmp_path, LAYOUT + [[]])  # and an image without objects
    assert class_image_fractions(ds) == {1: 4 / 5, 2: 1 / 5}
    factors = repeat_factors(ds, 0.5)
    # common: max(1, sqrt(0.5 / 0.8)) = 1; rare: sqrt(0.5 / 0.2) = 1.58; empty image: 1
    np.testing.assert_allclose(factors, [1, 1, 1, math.sqrt(2.5), 1])
    np.testing.assert_array_equal(repeat_factors(ds, 0.0), np.ones(5))
    with pytest.raises(ValueError, match=">= 0"):
        repeat_factors(ds, -1)


def test_passes_repeat_each_image_its_factor_on_average():
    factors = np.array([1.0, 1.0, 2.0, 2.5])
    rng = np.random.default_rng(0)
    counts = np.zeros(4)
    passes = 2000
    for _ in range(passes):
        indices = one_pass(factors, rng)
        per_image = np.bincount(indices, minlength=4)
        # whole parts always; the fraction adds at most one more
        assert per_image[0] == 1 and per_image[1] == 1 and per_image[2] == 2
        assert per_image[3] in (2, 3)
        counts += per_image
    np.testing.assert_allclose(counts / passes, factors, atol=0.05)
    # deterministic for a seed, different for another
    first = [next(s) for s in [index_stream(factors, 7)] for _ in range(30)]
    again = [next(s) for s in [index_stream(factors, 7)] for _ in range(30)]
    other = [next(s) for s in [index_stream(factors, 8)] for _ in range(30)]
    assert first == again and first != other
    assert sorted(index_stream(np.ones(3), 0, repeat=False)) == [0, 1, 2]


def test_pipeline_repeats_the_rare_image(tmp_path):
    ds = _records(tmp_path, LAYOUT)
    # threshold 1.0: common factor 1, rare image sqrt(1 / 0.25) = 2 -> twice a pass
    cfg = Config(image_size=64, class_names=("common", "rare"), augment=False,
                 repeat_threshold=1.0, max_gt_instances=4)
    one = make_dataset(ds, cfg, training=True, batch_size=1, repeat=False)
    seen = [int(round(float(b["image"][0, 0, 0, 0]) / 10)) for b in one]
    assert sorted(seen) == [0, 1, 2, 3, 3]
    # the rare image's batch carries its two instances and classes
    rare = [b for b in one if int(b["num_instances"][0]) == 2][0]
    np.testing.assert_array_equal(rare["gt_class_ids"][0, :2], [1, 2])
    # off: each image once a pass
    plain = make_dataset(ds, cfg.replace(repeat_threshold=0.0), training=True, batch_size=1,
                         repeat=False)
    assert len(list(plain)) == 4
