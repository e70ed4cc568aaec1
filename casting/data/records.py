"""In-memory description of an instance-segmentation dataset: one `Record` per image.

Loaders (Supervisely, COCO, synthetic) all produce a `DatasetRecords`. Masks are full-size
boolean arrays, but a record may decode them lazily (`Record.loader`), so a dataset of
hundreds of 512x512 images does not hold hundreds of megabytes of masks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from casting.errors import Explained
from casting.masks import mask_to_yxyx


class DatasetError(Explained, ValueError):
    """A dataset could not be loaded; the message is the full check report."""


@dataclass
class Instance:
    """One object: a 1-based class id into `DatasetRecords.class_names` and its mask."""

    class_id: int
    mask: np.ndarray  # bool [H, W]
    iscrowd: bool = False

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def bbox(self) -> tuple[int, int, int, int]:
        """(y1, x1, y2, x2) with exclusive ends; (0, 0, 0, 0) for an empty mask."""
        return mask_to_yxyx(self.mask)


class Record:
    """One image. Give either `instances` or a `loader` that returns them on demand.

    `source_id` is the id the image had in its source file (COCO), if any. `orientation`
    (EXIF 1-8, casting.images) turns the file's pixels into the image the annotation is
    on; 1: as stored. `tags` are the image's own tags (Supervisely image tags such as
    ``good`` / ``bad``), which part-level evaluation reads (casting.qc.parts).
    """

    def __init__(
        self,
        image_id: str,
        image_path: str,
        height: int,
        width: int,
        instances: list[Instance] | None = None,
        loader: Callable[[], list[Instance]] | None = None,
        source_id: int | str | None = None,
        orientation: int = 1,
        tags: Sequence[str] = (),
    ) -> None:
        if instances is None and loader is None:
            instances = []
        self.image_id = str(image_id)
        self.image_path = str(image_path)
        self.height = int(height)
        self.width = int(width)
        self._instances = list(instances) if instances is not None else None
        self.loader = loader
        self.source_id = source_id
        self.orientation = int(orientation)
        self.tags = tuple(str(t) for t in tags)

    def __repr__(self) -> str:
        return (f"Record(image_id={self.image_id!r}, image_path={self.image_path!r}, "
                f"height={self.height}, width={self.width})")

    @property
    def instances(self) -> list[Instance]:
        if self._instances is not None:
            return self._instances
        assert self.loader is not None
        return self.loader()

    def materialize(self) -> "Record":
        """A copy whose instances are held in memory."""
        return Record(self.image_id, self.image_path, self.height, self.width,
                      instances=self.instances, source_id=self.source_id,
                      orientation=self.orientation, tags=self.tags)


@dataclass
class DatasetRecords:
    """Class names (background excluded; class id i is class_names[i-1]) and the records."""

    class_names: tuple[str, ...]
    records: list[Record]
    # class id (1-based) -> category id in the source file, when the source had ids (COCO)
    source_category_ids: dict[int, int] | None = None

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, indices: Sequence[int]) -> "DatasetRecords":
        return dataclasses.replace(self, records=[self.records[i] for i in indices])

    def class_counts(self, include_crowd: bool = True) -> dict[str, int]:
        counts = {name: 0 for name in self.class_names}
        for rec in self.records:
            for inst in rec.instances:
                if include_crowd or not inst.iscrowd:
                    counts[self.class_names[inst.class_id - 1]] += 1
        return counts


def split_records(
    ds: DatasetRecords, val_fraction: float, seed: int
) -> tuple[DatasetRecords, DatasetRecords]:
    """Deterministic random split into (train, validation) by image.

    With 0 < val_fraction < 1 and at least two images, both parts get at least one image.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], not {val_fraction}")
    n = len(ds.records)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if 0.0 < val_fraction < 1.0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    val_idx = sorted(order[:n_val].tolist())
    train_idx = sorted(order[n_val:].tolist())
    return ds.subset(train_idx), ds.subset(val_idx)
