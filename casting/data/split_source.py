"""The images of a dataset to split, as flat items: name, files, image tags, object counts.

A split folder is one flat Supervisely dataset (``img/``, ``ann/`` and ``meta.json`` at its
top level), so every image needs a file name unique across the source's datasets: its own
file name when those are unique, else its dataset path joined with ``__``
(``ds1__child__a.png``).

Supervisely sources keep their annotation files (linked or copied as they are) and their
image tags (the strata); COCO sources get one Supervisely annotation written per image
(bitmap objects) and carry no tags.
"""

from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass, field

from casting.data import supervisely
from casting.data.records import DatasetError, DatasetRecords, Record


@dataclass
class SplitItem:
    """One image of the source."""

    name: str  # file name in the split's img/ (the annotation is ann/<name>.json)
    record: Record
    ann_path: str | None  # the source's Supervisely annotation; None: written from record
    tags: tuple[str, ...] = ()
    objects: dict[str, int] = field(default_factory=dict)  # class -> objects

    @property
    def image_path(self) -> str:
        return self.record.image_path


@dataclass
class SplitSource:
    """The checked source dataset and its items."""

    path: str
    format: str
    records: DatasetRecords
    items: list[SplitItem]
    meta_path: str | None  # the source's meta.json, if it has one
    geometries: dict[str, set[str]]  # class -> geometry types seen (Supervisely)
    tag_names: list[str]  # image tag names seen, sorted


def _flat_names(records: list[Record]) -> list[str]:
    base = [os.path.basename(r.image_path) for r in records]
    if len(set(base)) == len(base):
        return base
    names = []
    for rec in records:
        name = rec.image_id.replace("/", "__").replace("#", "_")
        ext = os.path.splitext(rec.image_path)[1]
        if not name.lower().endswith(supervisely.IMAGE_EXTS):
            name += ext
        names.append(name)
    if len(set(names)) != len(names):
        dup = sorted(n for n, c in collections.Counter(names).items() if c > 1)
        raise DatasetError(f"cannot give every image a unique file name: {dup[:5]} repeat; "
                           "rename the images")
    return names


def _supervisely_annotation(rec: Record) -> str:
    img_dir = os.path.dirname(rec.image_path)
    ann_dir = os.path.join(os.path.dirname(img_dir), "ann")
    path = supervisely.find_annotation(ann_dir, os.path.basename(rec.image_path))
    if path is None:  # the check would have reported it; defensive
        raise DatasetError(f"{rec.image_path}: no annotation in {ann_dir}")
    return path


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_source(path: str) -> SplitSource:
    """Read and check ``path`` (Supervisely or COCO). A dataset with problems is refused:
    a split must load as cleanly as its source."""
    from casting.data import detect_format, read_dataset

    fmt = detect_format(path)
    ds, report = read_dataset(path)
    if not report.ok:
        raise DatasetError(
            f"{path}: cannot split a dataset with problems; fix them first "
            f"(`python -m casting.data check {path}` lists them):\n{report.text()}")
    names = _flat_names(ds.records)
    items, geometries, tag_names = [], collections.defaultdict(set), set()
    for name, rec in zip(names, ds.records):
        objects = {c: 0 for c in ds.class_names}
        for inst in rec.instances:
            objects[ds.class_names[inst.class_id - 1]] += 1
        ann_path, tags = None, ()
        if fmt == "supervisely":
            ann_path = _supervisely_annotation(rec)
            ann = _read_json(ann_path)
            tags = tuple(sorted({str(t.get("name")) for t in ann.get("tags") or []
                                 if isinstance(t, dict) and t.get("name")}))
            tag_names.update(tags)
            for obj in ann.get("objects") or []:
                if obj.get("geometryType") in supervisely.SUPPORTED_GEOMETRIES:
                    geometries[str(obj.get("classTitle"))].add(obj["geometryType"])
        items.append(SplitItem(name, rec, ann_path, tags, objects))
    meta = os.path.join(path, "meta.json")
    meta_path = meta if fmt == "supervisely" and os.path.isfile(meta) else None
    return SplitSource(os.path.abspath(path), fmt, ds, items, meta_path, dict(geometries),
                       sorted(tag_names))
