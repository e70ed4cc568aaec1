"""COCO instance-segmentation JSON: read and write.

Reads polygons (several parts), uncompressed and compressed RLE, `iscrowd`, non-contiguous
category ids (kept in `DatasetRecords.source_category_ids`, class id -> category id), images
without annotations and `file_name`s with sub-folders. Images are looked up next to the JSON
file, then in an `images/` folder beside it.

Writes compressed RLE (exact masks) that pycocotools loads.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_util

from casting.data import check as chk
from casting.data.records import DatasetError, DatasetRecords, Instance
from casting.files import write_atomic
from casting.masks import mask_to_bbox, mask_to_rle

BAD_OBJECT = "bad object"


def find_coco_json(path: str) -> str | None:
    """The annotation file: `path` itself, or the one *.json in the folder (or annotations/)."""
    if os.path.isfile(path):
        return path if path.lower().endswith(".json") else None
    if not os.path.isdir(path):
        return None
    for folder in (path, os.path.join(path, "annotations")):
        if not os.path.isdir(folder):
            continue
        found = sorted(f for f in os.listdir(folder)
                       if f.lower().endswith(".json") and f != "meta.json")
        if len(found) == 1:
            return os.path.join(folder, found[0])
        if len(found) > 1:
            raise DatasetError(f"{folder}: several annotation files {found}; "
                               "pass the one to use")
    return None


def _resolve_image(json_dir: str, file_name: str) -> str:
    candidates = [os.path.join(json_dir, file_name),
                  os.path.join(json_dir, "images", file_name),
                  os.path.join(os.path.dirname(json_dir), "images", file_name)]
    for cand in candidates:
        if os.path.isfile(cand):
            return cand
    return candidates[0]


def _points_outside(poly: Sequence[float], height: int, width: int) -> bool:
    pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    return bool(((pts[:, 0] < -1) | (pts[:, 0] > width + 1)
                 | (pts[:, 1] < -1) | (pts[:, 1] > height + 1)).any())


def segmentation_mask(seg: Any, height: int, width: int) -> tuple[np.ndarray, bool]:
    """(bool mask, outside) for a COCO segmentation; raises ValueError when malformed."""
    if isinstance(seg, list):
        if not seg:
            raise ValueError("empty segmentation")
        polys = []
        for part in seg:
            if not isinstance(part, list) or len(part) < 6 or len(part) % 2:
                raise ValueError("a polygon needs an even number (>= 6) of coordinates")
            polys.append([float(v) for v in part])
        outside = any(_points_outside(p, height, width) for p in polys)
        rle = mask_util.merge(mask_util.frPyObjects(polys, height, width))
        return mask_util.decode(rle).astype(bool), outside
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        h, w = (int(v) for v in seg["size"])
        if (h, w) != (height, width):
            raise ValueError(f"RLE size {h}x{w} differs from the image size {height}x{width}")
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            total = sum(int(c) for c in counts)
            if any(int(c) < 0 for c in counts) or total != h * w:
                raise ValueError(f"RLE counts sum to {total}, expected {h}*{w}={h * w}")
            rle = mask_util.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]},
                                        h, w)
        else:  # compressed RLE
            rle = {"size": [h, w],
                   "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        mask = mask_util.decode(rle).astype(bool)
        if mask.shape != (h, w):
            raise ValueError("RLE does not decode to the image size")
        return mask, False
    raise ValueError("segmentation is neither polygons nor RLE")


def _parse_anns(anns, json_path, image_id, height, width, cat_to_class, report):
    out = []
    for ann in anns:
        where = f"annotation id {ann.get('id')}"
        cat = ann.get("category_id")
        if cat not in cat_to_class:
            out.append((None, chk.Problem(chk.UNKNOWN_CLASS, json_path,
                                          f"{where}: category_id {cat} is not in categories",
                                          image_id)))
            continue
        class_id, error = cat_to_class[cat]
        skip = chk.class_outcome(class_id, error, json_path, where, image_id, report, str(cat))
        if skip is not None:
            out.append(skip)
            continue
        seg = ann.get("segmentation")
        if not seg:
            out.append((None, chk.Problem(BAD_OBJECT, json_path, f"{where}: no segmentation",
                                          image_id)))
            continue
        try:
            mask, outside = segmentation_mask(seg, height, width)
        except Exception as exc:
            out.append((None, chk.Problem(BAD_OBJECT, json_path, f"{where}: {exc}", image_id)))
            continue
        if outside:
            out.append((None, chk.Problem(
                chk.MASK_OUTSIDE, json_path,
                f"{where}: polygon extends beyond the {height}x{width} image", image_id)))
            continue
        if not mask.any():
            out.append((None, chk.Problem(chk.EMPTY_MASK, json_path, f"{where}: mask is empty",
                                          image_id)))
            continue
        out.append((Instance(class_id, mask, bool(ann.get("iscrowd", 0))), None))
    return out


def read_coco(path: str, class_map: Mapping[str, str | None] | None = None,
              class_names: Sequence[str] | None = None, check_images: bool = True
              ) -> tuple[DatasetRecords, chk.Report]:
    json_path = find_coco_json(path)
    if json_path is None:
        raise DatasetError(f"{path}: no COCO annotation .json found")
    json_path = os.path.abspath(json_path)
    json_dir = os.path.dirname(json_path)
    try:
        with open(json_path, encoding="utf-8") as fh:
            data = json.load(fh)
    except Exception as exc:
        raise DatasetError(f"{json_path}: cannot read COCO JSON ({exc})") from exc
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing:
        raise DatasetError(f"{json_path}: not a COCO instances file (missing lists {missing})")

    report = chk.Report(source=json_path, format="coco")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    mapper = chk.ClassMapper([str(c["name"]) for c in cats], class_map, class_names)
    report.class_names = mapper.class_names
    cat_to_class = {c["id"]: mapper.resolve(str(c["name"])) for c in cats}
    source_ids: dict[int, int] = {}
    for c in cats:
        cid = cat_to_class[c["id"]][0]
        if cid is not None and cid not in source_ids:
            source_ids[cid] = int(c["id"])

    by_image = collections.defaultdict(list)
    image_ids = {img.get("id") for img in data["images"]}
    for ann in data["annotations"]:
        if ann.get("image_id") not in image_ids:
            report.problems.append(chk.Problem(
                BAD_OBJECT, json_path,
                f"annotation id {ann.get('id')} refers to image id {ann.get('image_id')}, "
                "which is not in images"))
            continue
        by_image[ann["image_id"]].append(ann)

    records = []
    seen_names = set()
    for img in data["images"]:
        report.num_images += 1
        file_name = str(img.get("file_name", ""))
        image_id = file_name
        if image_id in seen_names:
            image_id = f"{file_name}#{img.get('id')}"
        seen_names.add(image_id)
        image_path = _resolve_image(json_dir, file_name)
        anns = by_image.get(img.get("id"), [])
        records.append(chk.checked_record(
            image_id, image_path, img.get("height"), img.get("width"), report, check_images,
            mapper.class_names, source_id=img.get("id"),
            parse=lambda h, w: _parse_anns(anns, json_path, image_id, h, w, cat_to_class,
                                           report),
            loader_for=lambda h, w: _make_loader(anns, json_path, image_id, h, w,
                                                 cat_to_class)))
    return DatasetRecords(mapper.class_names, records, source_category_ids=source_ids), report


def _make_loader(anns, json_path, image_id, height, width, cat_to_class):
    def load() -> list[Instance]:
        return [inst for inst, problem in
                _parse_anns(anns, json_path, image_id, height, width, cat_to_class, None)
                if inst is not None and problem is None]
    return load


def write_coco(ds: DatasetRecords, out_dir: str, json_name: str = "annotations.json",
               copy_images: bool = True, progress: bool = False) -> str:
    """Write `out_dir/annotations.json` (compressed RLE) and copy images to `out_dir/images/`.

    `file_name` keeps the record's image id (sub-folders included). Category ids are the
    source ones when the dataset came from COCO, else 1..K. Returns the JSON path.
    """
    from tqdm import tqdm

    os.makedirs(out_dir, exist_ok=True)
    src_ids = ds.source_category_ids or {}
    cat_id = {i + 1: int(src_ids.get(i + 1, i + 1)) for i in range(len(ds.class_names))}
    images, annotations = [], []
    for n, rec in enumerate(tqdm(ds.records, desc="coco", unit="img", disable=not progress)):
        file_name = rec.image_id
        ext = os.path.splitext(rec.image_path)[1]
        if not os.path.splitext(file_name)[1]:
            file_name += ext
        if copy_images:
            dst = os.path.join(out_dir, "images", file_name)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.abspath(rec.image_path) != os.path.abspath(dst):
                shutil.copyfile(rec.image_path, dst)
        images.append({"id": n + 1, "file_name": file_name, "height": rec.height,
                       "width": rec.width})
        for inst in rec.instances:
            if not inst.mask.any():
                continue
            rle = mask_to_rle(inst.mask)
            x, y, w, h = mask_to_bbox(inst.mask)
            annotations.append({
                "id": len(annotations) + 1, "image_id": n + 1,
                "category_id": cat_id[inst.class_id], "segmentation": rle,
                "area": float(inst.area), "bbox": [x, y, w, h],
                "iscrowd": int(inst.iscrowd),
            })
    data = {"info": {"description": "casting defects"}, "licenses": [],
            "images": images, "annotations": annotations,
            "categories": [{"id": cat_id[i + 1], "name": name, "supercategory": "defect"}
                           for i, name in enumerate(ds.class_names)]}
    path = os.path.join(out_dir, json_name)
    write_atomic(path, json.dumps(data))
    return path
