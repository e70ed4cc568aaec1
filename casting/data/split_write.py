"""Write a train/test split of a dataset as two flat Supervisely folders.

``split_dataset(src, out)`` writes::

    out/train/{meta.json, img/<name>, ann/<name>.json}
    out/test/{meta.json, img/<name>, ann/<name>.json}
    out/split.json      seed, fraction, strata, the image names and object counts per split

Image and annotation files are symbolic links to the source's (absolute paths), or copies
with ``copy=True``. COCO sources get their annotations written as Supervisely bitmaps.
``meta.json`` is the source's, or one written with the source's classes in the order the
loader gives them, so both splits number the classes alike. Each folder is what
``casting.data`` loaders, ``train.py --train/--validation`` and tools that read
``DIR/ann/*.json`` + ``DIR/img/<name>`` directly all read.

The folders are built beside their destination and moved into place at the end. Existing
``train``/``test`` folders are replaced only when they hold exactly the files this split
writes (a rerun), or with ``force=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Sequence

from casting.data import split as choose
from casting.data.records import DatasetError
from casting.data.split_source import SplitItem, SplitSource, read_source
from casting.data.supervisely import PALETTE, annotation_json

SIDES = ("train", "test")


class SplitError(DatasetError):
    """The split cannot be written (destination in the way, bad arguments)."""


# ---- strata --------------------------------------------------------------------------------
def strata_for(source: SplitSource, stratify: bool,
               tags: Sequence[str] | None) -> tuple[dict[str, str], list[str]]:
    """(image name -> stratum label, the tag names used)."""
    if tags and not stratify:
        raise SplitError("--stratify-tags and --no-stratify contradict each other")
    if tags:
        missing = sorted(set(tags) - set(source.tag_names))
        if missing:
            raise SplitError(
                f"{source.path}: no image carries the tag(s) {missing}; the image tags are "
                f"{source.tag_names or 'none'}: pass some of those to --stratify-tags")
        used = sorted(set(tags))
    else:
        used = list(source.tag_names) if stratify else []
    if not used:
        return {item.name: choose.ALL for item in source.items}, []
    keep = set(used)
    return {item.name: choose.stratum_label(t for t in item.tags if t in keep)
            for item in source.items}, used


# ---- destination ---------------------------------------------------------------------------
def _within(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _listing(folder: str) -> set[str]:
    out = set()
    for dirpath, _, files in os.walk(folder):
        for f in files:
            out.add(os.path.relpath(os.path.join(dirpath, f), folder).replace(os.sep, "/"))
    return out


def planned_files(names: Sequence[str]) -> set[str]:
    """The files a split folder of these images holds."""
    return ({"meta.json"} | {f"img/{n}" for n in names} | {f"ann/{n}.json" for n in names})


def check_destination(src: str, out: str, planned: dict[str, set[str]], force: bool) -> None:
    """Refuse overlapping source and destination, and foreign content unless ``force``."""
    if _within(out, src):
        raise SplitError(f"{out}: the output folder is inside the source {src}, whose "
                         "loader would then read the split as more data; choose an --out "
                         "outside it")
    for side in SIDES:
        folder = os.path.join(out, side)
        if _within(src, folder):
            raise SplitError(f"{folder}: holds the source {src}; choose another --out")
        if not os.path.lexists(folder):
            continue
        if os.path.islink(folder) or not os.path.isdir(folder):
            found = "a link" if os.path.islink(folder) else "a file"
            if not force:
                raise SplitError(f"{folder}: exists and is {found}, not a split folder; "
                                 "remove it, choose another --out, or pass --force")
            continue
        existing = _listing(folder)
        if existing and existing != planned[side] and not force:
            extra = sorted(existing - planned[side])[:3]
            raise SplitError(
                f"{folder}: already holds other content ({len(existing)} files, e.g. "
                f"{extra}) than this split; pass --force to replace it, or choose another "
                "--out")


def _remove(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


# ---- writing -------------------------------------------------------------------------------
def generated_meta(source: SplitSource) -> dict:
    """meta.json for a source without one: its classes (loader order) and image tags."""
    classes = []
    for i, name in enumerate(source.records.class_names):
        shapes = source.geometries.get(name) or {"bitmap"}
        classes.append({"title": name, "shape": next(iter(shapes)) if len(shapes) == 1 else "any",
                        "color": PALETTE[i % len(PALETTE)]})
    tags = [{"name": t, "value_type": "none", "color": PALETTE[(i + 3) % len(PALETTE)]}
            for i, t in enumerate(source.tag_names)]
    return {"classes": classes, "tags": tags, "projectType": "images"}


def _place(src: str, dst: str, copy: bool) -> None:
    if copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(os.path.abspath(src), dst)


def write_folder(folder: str, items: Sequence[SplitItem], source: SplitSource,
                 copy: bool) -> None:
    """One split: meta.json, img/ and ann/ (links or copies; COCO annotations written)."""
    os.makedirs(os.path.join(folder, "img"))
    os.makedirs(os.path.join(folder, "ann"))
    meta = os.path.join(folder, "meta.json")
    if source.meta_path:
        _place(source.meta_path, meta, copy)
    else:
        with open(meta, "w", encoding="utf-8") as fh:
            json.dump(generated_meta(source), fh, indent=2)
    class_names = source.records.class_names
    for item in items:
        _place(item.image_path, os.path.join(folder, "img", item.name), copy)
        ann = os.path.join(folder, "ann", item.name + ".json")
        if item.ann_path:
            _place(item.ann_path, ann, copy)
        else:
            with open(ann, "w", encoding="utf-8") as fh:
                json.dump(annotation_json(item.record, class_names), fh)


def side_summary(items: Sequence[SplitItem], class_names: Sequence[str],
                 strata: dict[str, str]) -> dict:
    objects = {c: sum(item.objects.get(c, 0) for item in items) for c in class_names}
    counts: dict[str, int] = {}
    for item in items:
        counts[strata[item.name]] = counts.get(strata[item.name], 0) + 1
    return {"num_images": len(items), "objects": objects,
            "strata": dict(sorted(counts.items())), "images": [item.name for item in items]}


def summary_line(side: str, info: dict) -> str:
    """``train: 150 images (bad 103, good 47); objects disk=151 holes=70 ... (total 1191)``"""
    strata = info["strata"]
    parts = "" if list(strata) == [choose.ALL] else \
        " (" + ", ".join(f"{k} {n}" for k, n in strata.items()) + ")"
    objects = " ".join(f"{c}={n}" for c, n in info["objects"].items())
    return (f"{side}: {info['num_images']} images{parts}; objects {objects} "
            f"(total {sum(info['objects'].values())})")


def split_dataset(src: str, out: str, test_fraction: float = 0.2, seed: int = 0,
                  copy: bool = False, force: bool = False, stratify: bool = True,
                  stratify_tags: Sequence[str] | None = None) -> dict:
    """Choose and write the split; returns what ``out/split.json`` holds."""
    source = read_source(src)
    strata, used_tags = strata_for(source, stratify, stratify_tags)
    try:
        choice = choose.choose_split(strata, test_fraction, seed)
    except ValueError as exc:
        raise SplitError(f"{src}: {exc}") from None
    names = {"train": choice.train, "test": choice.test}
    check_destination(src, out, {s: planned_files(names[s]) for s in SIDES}, force)
    by_name = {item.name: item for item in source.items}
    summary = {
        "source": source.path, "format": source.format, "seed": int(seed),
        "test_fraction": float(test_fraction), "stratified_by_tags": used_tags,
        "files": "copy" if copy else "symlink",
        "class_names": list(source.records.class_names),
    }
    for side in SIDES:
        summary[side] = side_summary([by_name[n] for n in names[side]],
                                     source.records.class_names, strata)
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".split-tmp-", dir=out)
    try:
        for side in SIDES:
            write_folder(os.path.join(tmp, side), [by_name[n] for n in names[side]],
                         source, copy)
        with open(os.path.join(tmp, "split.json"), "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
        for entry in (*SIDES, "split.json"):
            _remove(os.path.join(out, entry))
            os.rename(os.path.join(tmp, entry), os.path.join(out, entry))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
