"""Repeat-factor sampling: images that hold rare classes are seen more often.

The rule of LVIS (Gupta et al., 2019): with f(c) the fraction of training images that hold
class c and a threshold t, class c has the repeat factor r(c) = max(1, sqrt(t / f(c))), and
an image the largest r(c) of the classes it holds (1 for an image without objects). In each
pass over the data an image with factor r appears floor(r) times, plus once more with
probability r - floor(r), so that on average it appears r times. t = 0 turns it off.

With the casting data's four classes, t = 0.5 leaves images of classes in at least half of
the images alone and repeats an image with holes (in ~25% of the images) about 1.4 times.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from casting.data.records import DatasetRecords


def class_image_fractions(ds: DatasetRecords) -> dict[int, float]:
    """1-based class id -> fraction of the images that hold at least one (non-crowd)
    instance of it. Classes that no image holds are left out."""
    if not ds.records:
        return {}
    holding: dict[int, int] = {}
    for rec in ds.records:
        for cid in {inst.class_id for inst in rec.instances if not inst.iscrowd}:
            holding[cid] = holding.get(cid, 0) + 1
    return {cid: n / len(ds.records) for cid, n in holding.items()}


def repeat_factors(ds: DatasetRecords, threshold: float) -> np.ndarray:
    """Each image's repeat factor (float64 [N], >= 1) for the threshold t."""
    if threshold < 0:
        raise ValueError(f"repeat threshold must be >= 0, not {threshold}")
    factors = np.ones(len(ds.records), np.float64)
    if threshold == 0:
        return factors
    per_class = {cid: max(1.0, math.sqrt(threshold / f))
                 for cid, f in class_image_fractions(ds).items()}
    for i, rec in enumerate(ds.records):
        classes = {inst.class_id for inst in rec.instances if not inst.iscrowd}
        factors[i] = max([per_class[c] for c in classes], default=1.0)
    return factors


def one_pass(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image indices of one pass, shuffled: image i floor(r_i) times, plus once more
    with probability frac(r_i)."""
    whole = np.floor(factors).astype(np.int64)
    extra = rng.random(len(factors)) < (factors - whole)
    counts = whole + extra.astype(np.int64)
    indices = np.repeat(np.arange(len(factors), dtype=np.int64), counts)
    rng.shuffle(indices)
    return indices


def index_stream(factors: np.ndarray, seed: int, repeat: bool = True) -> Iterator[int]:
    """Image indices pass after pass (one pass when not `repeat`), deterministic for a
    seed."""
    rng = np.random.default_rng(seed)
    while True:
        yield from (int(i) for i in one_pass(factors, rng))
        if not repeat:
            return
