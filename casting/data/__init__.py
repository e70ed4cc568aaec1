"""The data layer: dataset loaders, checks, synthetic castings and the tf.data pipeline.

`load_dataset(path)` reads a Supervisely project or a COCO JSON (detected automatically),
checks it and returns a `DatasetRecords`. The TensorFlow pipeline lives in
`casting.data.pipeline` (imported on demand so the loaders work without TensorFlow).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from casting.data.check import Report
from casting.data.records import DatasetError, DatasetRecords, Instance, Record, split_records

__all__ = ["DatasetError", "DatasetRecords", "Instance", "Record", "split_records",
           "load_dataset", "read_dataset", "detect_format"]


def detect_format(path: str | os.PathLike) -> str:
    """'supervisely' or 'coco'; raises DatasetError when it is neither."""
    from casting.data import coco, supervisely

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file or folder")
    if os.path.isdir(path) and supervisely.is_supervisely(path):
        return "supervisely"
    if coco.find_coco_json(path) is not None:
        return "coco"
    raise DatasetError(
        f"{path}: neither a Supervisely project (meta.json or <dataset>/img + ann/) "
        "nor a COCO annotation .json (or a folder holding one)")


def read_dataset(path: str | os.PathLike, class_map: Mapping[str, str | None] | None = None,
                 class_names: Sequence[str] | None = None,
                 check_images: bool = True) -> tuple[DatasetRecords, Report]:
    """Read without acting on problems: (records, check report)."""
    from casting.data import coco, supervisely

    path = os.fspath(path)
    if detect_format(path) == "supervisely":
        return supervisely.read_supervisely(path, class_map, class_names, check_images)
    return coco.read_coco(path, class_map, class_names, check_images)


def load_dataset(path: str | os.PathLike, class_map: Mapping[str, str | None] | None = None,
                 class_names: Sequence[str] | None = None,
                 on_error: str = "raise") -> DatasetRecords:
    """Load and check a dataset.

    on_error="raise": any problem raises DatasetError with the full check report.
    on_error="skip": bad images / objects are dropped, with a logged warning and a count.
    """
    from casting.data.check import apply_on_error

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    ds, report = read_dataset(path, class_map, class_names)
    return apply_on_error(ds, report, on_error)
