"""Choosing a deterministic, stratified train/test split of a dataset's images.

The choice depends only on the image names, the stratum of each image and the seed. Each
image's place in the draw is the SHA-256 of ``"<seed>:<name>"``: neither the file-system
order, nor Python's hash seed, nor the NumPy version change it, and adding an image to a
dataset does not reshuffle the others.

Stratification: every stratum (for Supervisely data, the combination of an image's tags,
e.g. ``bad`` or ``good+reviewd``) gives the same share of its images to the test split.
The test split has ``round(N * fraction)`` images in all (at least one, and at least one
image stays in training); it is shared among the strata in proportion to their sizes,
the rounding left-overs going to the strata with the largest remainders (ties: in name
order), so that every stratum's share is as close to ``fraction`` as whole images allow.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, Mapping

UNTAGGED = "untagged"
ALL = "all"


@dataclass(frozen=True)
class SplitChoice:
    """The outcome: sorted image names per side and, per stratum, (train, test) counts."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    strata: dict[str, tuple[int, int]]


def draw_key(name: str, seed: int) -> str:
    """The image's place in the draw for this seed (a hex digest; lower goes to test)."""
    return hashlib.sha256(f"{int(seed)}:{name}".encode("utf-8")).hexdigest()


def stratum_label(tags: Iterable[str]) -> str:
    """``("good", "reviewd")`` -> ``"good+reviewd"``; no tags -> ``"untagged"``."""
    names = sorted(set(tags))
    return "+".join(names) if names else UNTAGGED


def num_test_images(num_images: int, fraction: float) -> int:
    """``round(N * fraction)`` (halves up), kept within [1, N - 1]."""
    n = int(math.floor(num_images * fraction + 0.5))
    return min(max(n, 1), num_images - 1)


def allocate(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """Share ``total`` among strata in proportion to ``sizes`` (largest remainder)."""
    whole = sum(sizes.values())
    if not 0 <= total <= whole:
        raise ValueError(f"cannot take {total} of {whole} images")
    quotas = {key: size * total / whole for key, size in sizes.items()}
    out = {key: int(math.floor(q)) for key, q in quotas.items()}
    left = total - sum(out.values())
    by_remainder = sorted(quotas, key=lambda key: (-(quotas[key] - out[key]), key))
    for key in by_remainder[:left]:
        out[key] += 1
    return out


def choose_split(strata: Mapping[str, str], fraction: float, seed: int) -> SplitChoice:
    """Split images into train and test.

    ``strata`` maps each image name to its stratum label (give every image the same label
    for a plain random split). Raises ValueError for a fraction outside (0, 1) or fewer
    than two images.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"the test fraction must be between 0 and 1 (exclusive), "
                         f"not {fraction}")
    if len(strata) < 2:
        raise ValueError(f"a split needs at least 2 images, there are {len(strata)}")
    groups: dict[str, list[str]] = {}
    for name in sorted(strata):
        groups.setdefault(strata[name], []).append(name)
    quota = allocate({key: len(names) for key, names in groups.items()},
                     num_test_images(len(strata), fraction))
    train, test, counts = [], [], {}
    for key in sorted(groups):
        drawn = sorted(groups[key], key=lambda name: draw_key(name, seed))
        k = quota[key]
        test.extend(drawn[:k])
        train.extend(drawn[k:])
        counts[key] = (len(drawn) - k, k)
    return SplitChoice(tuple(sorted(train)), tuple(sorted(test)), counts)
