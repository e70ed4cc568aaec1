"""Supervisely projects: read (with or without meta.json) and write.

Layout: `<project>/[meta.json]`, `<project>/<dataset>/img/<image>` and
`<project>/<dataset>/ann/<image>.json` (or `<image-without-ext>.json`); datasets may nest as
`<dataset>/datasets/<child>/{img,ann}`. Geometries read: `bitmap`, `alpha_mask` (base64 of a
zlib-compressed PNG, `origin` = [x, y] of its top-left corner), `polygon` (exterior and
interior holes) and `rectangle` (inclusive corners). Other geometry types are skipped and
counted in the report.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from casting.data import check as chk
from casting.data.records import DatasetRecords, Instance, Record
from casting.masks import mask_to_yxyx

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SUPPORTED_GEOMETRIES = ("bitmap", "alpha_mask", "polygon", "rectangle")
BAD_OBJECT = "bad object"


# ---- detection -----------------------------------------------------------------------------
def find_datasets(root: str) -> list[tuple[str, str]]:
    """(dataset name, folder) for every folder under root holding both img/ and ann/."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        if "img" in dirnames and "ann" in dirnames:
            rel = os.path.relpath(dirpath, root)
            name = os.path.basename(os.path.abspath(root)) if rel == "." else rel
            found.append((name.replace(os.sep, "/"), dirpath))
    return found


def is_supervisely(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "meta.json")) or bool(find_datasets(path))
    )


# ---- geometry ------------------------------------------------------------------------------
def decode_bitmap(data: str) -> np.ndarray:
    """base64(zlib(PNG)) -> bool mask. RGBA/LA PNGs use alpha; others any non-zero value."""
    png = zlib.decompress(base64.b64decode(data))
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "PA"):
            arr = np.asarray(im.getchannel("A"))
        elif im.mode == "P" or im.mode in ("1", "L", "I", "I;16", "F"):
            arr = np.asarray(im)
        else:
            arr = np.asarray(im.convert("RGB"))[..., 0]
    return arr != 0


def decode_alpha_mask(data: str) -> np.ndarray:
    """alpha_mask: like bitmap, but a pixel belongs where its alpha/grey value is >= 128."""
    png = zlib.decompress(base64.b64decode(data))
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        if im.mode in ("RGBA", "LA"):
            arr = np.asarray(im.getchannel("A"))
        else:
            arr = np.asarray(im.convert("L"))
    return arr >= 128


def encode_bitmap(mask: np.ndarray) -> tuple[str, list[int]]:
    """Crop a bool mask to its bounding box -> (base64 zlib PNG, origin [x, y])."""
    y1, x1, y2, x2 = mask_to_yxyx(mask)
    if y2 == 0:
        raise ValueError("cannot encode an empty mask")
    crop = mask[y1:y2, x1:x2]
    buf = io.BytesIO()
    Image.fromarray(crop.astype(np.uint8) * 255).convert("1").save(buf, format="PNG")
    data = base64.b64encode(zlib.compress(buf.getvalue())).decode("ascii")
    return data, [x1, y1]


def _parse_origin(origin: Any) -> tuple[int, int]:
    if isinstance(origin, str):  # some exports store "[x, y]" as a string
        origin = json.loads(origin)
    x, y = origin
    return int(x), int(y)


def _points_outside(points: Sequence[Sequence[float]], height: int, width: int) -> bool:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return bool(((pts[:, 0] < -0.5) | (pts[:, 0] > width - 0.5)
                 | (pts[:, 1] < -0.5) | (pts[:, 1] > height - 0.5)).any())


def polygon_mask(exterior, interiors, height: int, width: int) -> np.ndarray:
    """Fill the exterior ring (pixel-centre points, boundary included) minus the holes."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([(float(x), float(y)) for x, y in exterior], fill=1, outline=1)
    for hole in interiors:
        if len(hole) >= 3:
            draw.polygon([(float(x), float(y)) for x, y in hole], fill=0, outline=0)
    return np.asarray(canvas, dtype=bool)


def object_mask(obj: Mapping[str, Any], height: int, width: int) -> tuple[np.ndarray, bool]:
    """(full-size bool mask, outside) for a supported geometry; raises on malformed data."""
    gtype = obj.get("geometryType")
    if gtype in ("bitmap", "alpha_mask"):
        bm = obj["bitmap"]
        local = decode_bitmap(bm["data"]) if gtype == "bitmap" else decode_alpha_mask(bm["data"])
        x0, y0 = _parse_origin(bm["origin"])
        return chk.place_mask(local, x0, y0, height, width)
    if gtype == "polygon":
        exterior = obj["points"]["exterior"]
        interiors = obj["points"].get("interior", []) or []
        if len(exterior) < 3:
            raise ValueError(f"polygon exterior has {len(exterior)} points (needs >= 3)")
        outside = _points_outside(exterior, height, width)
        return polygon_mask(exterior, interiors, height, width), outside
    if gtype == "rectangle":
        (xa, ya), (xb, yb) = obj["points"]["exterior"][:2]
        x1, x2 = sorted((int(round(xa)), int(round(xb))))
        y1, y2 = sorted((int(round(ya)), int(round(yb))))
        outside = x1 < 0 or y1 < 0 or x2 > width - 1 or y2 > height - 1
        mask = np.zeros((height, width), dtype=bool)
        mask[max(y1, 0):max(y2 + 1, 0), max(x1, 0):max(x2 + 1, 0)] = True
        return mask, outside
    raise ValueError(f"unsupported geometry {gtype!r}")


# ---- reading -------------------------------------------------------------------------------
def find_annotation(ann_dir: str, image_name: str) -> str | None:
    """The annotation of `image_name` in `ann_dir`: `<image>.json` or `<stem>.json`."""
    for cand in (image_name + ".json", os.path.splitext(image_name)[0] + ".json"):
        path = os.path.join(ann_dir, cand)
        if os.path.isfile(path):
            return path
    return None


def _parse_objects(ann: Mapping[str, Any], ann_path: str, image_id: str, height: int,
                   width: int, mapper: chk.ClassMapper, report: chk.Report | None):
    """Decode the objects of one annotation -> list of (Instance | None, Problem | None)."""
    out = []
    for k, obj in enumerate(ann.get("objects", []) or []):
        title = obj.get("classTitle")
        gtype = obj.get("geometryType")
        where = f"object {k} ({title!r}, {gtype})"
        if gtype not in SUPPORTED_GEOMETRIES:
            if report is not None:
                report.warnings[f"skipped geometry type {gtype!r}"] += 1
            out.append((None, None))
            continue
        class_id, error = mapper.resolve(str(title))
        skip = chk.class_outcome(class_id, error, ann_path, where, image_id, report,
                                 str(title))
        if skip is not None:
            out.append(skip)
            continue
        try:
            mask, outside = object_mask(obj, height, width)
        except Exception as exc:
            out.append((None, chk.Problem(BAD_OBJECT, ann_path,
                                          f"{where}: cannot decode ({exc})", image_id)))
            continue
        if outside:
            out.append((None, chk.Problem(chk.MASK_OUTSIDE, ann_path,
                                          f"{where}: extends beyond the {height}x{width} image",
                                          image_id)))
            continue
        if not mask.any():
            out.append((None, chk.Problem(chk.EMPTY_MASK, ann_path, f"{where}: mask is empty",
                                          image_id)))
            continue
        tags = obj.get("tags") or []
        iscrowd = any(isinstance(t, dict) and t.get("name") == "iscrowd" for t in tags)
        out.append((Instance(class_id, mask, iscrowd), None))
    return out


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError("top level is not a JSON object")
    return data


def read_supervisely(root: str, class_map: Mapping[str, str | None] | None = None,
                     class_names: Sequence[str] | None = None, check_images: bool = True
                     ) -> tuple[DatasetRecords, chk.Report]:
    """Read every dataset under root; returns the records and the check report."""
    root = os.path.abspath(root)
    report = chk.Report(source=root, format="supervisely")
    known = None
    meta_path = os.path.join(root, "meta.json")
    meta_order: list[str] = []
    if os.path.isfile(meta_path):
        try:
            meta = _read_json(meta_path)
            meta_order = [c["title"] for c in meta.get("classes", [])]
            known = set(meta_order)
        except Exception as exc:
            from casting.data.records import DatasetError
            raise DatasetError(f"{meta_path}: cannot read meta.json ({exc})") from exc
    datasets = find_datasets(root)
    if not datasets:
        from casting.data.records import DatasetError
        raise DatasetError(f"{root}: no Supervisely dataset (a folder with img/ and ann/)")

    # Pass 1: find images and annotations, read the JSON, collect class titles.
    items = []  # (image_id, image_path, ann_path, ann)
    titles: list[str] = []
    for ds_name, ds_dir in datasets:
        img_dir, ann_dir = os.path.join(ds_dir, "img"), os.path.join(ds_dir, "ann")
        images = sorted(f for f in os.listdir(img_dir)
                        if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."))
        used_anns = set()
        for name in images:
            image_id = f"{ds_name}/{name}"
            image_path = os.path.join(img_dir, name)
            ann_path = find_annotation(ann_dir, name)
            if ann_path is None:
                report.problems.append(chk.Problem(
                    chk.MISSING_ANNOTATION, image_path,
                    f"no {name}.json or {os.path.splitext(name)[0]}.json in {ann_dir}", image_id))
                items.append((image_id, image_path, None, None))
                continue
            used_anns.add(os.path.basename(ann_path))
            try:
                ann = _read_json(ann_path)
            except Exception as exc:
                report.problems.append(chk.Problem(chk.BAD_ANNOTATION, ann_path,
                                                   f"not valid JSON ({exc})", image_id))
                items.append((image_id, image_path, None, None))
                continue
            for obj in ann.get("objects", []) or []:
                t = str(obj.get("classTitle"))
                if obj.get("geometryType") in SUPPORTED_GEOMETRIES and t not in titles:
                    titles.append(t)
            items.append((image_id, image_path, ann_path, ann))
        for ann_name in sorted(os.listdir(ann_dir)):
            if ann_name.endswith(".json") and ann_name not in used_anns:
                report.problems.append(chk.Problem(
                    chk.UNREADABLE_IMAGE, os.path.join(ann_dir, ann_name),
                    f"annotation has no image in {img_dir}"))

    source_names = meta_order + sorted(t for t in titles if t not in meta_order)
    mapper = chk.ClassMapper(source_names, class_map, class_names, known=known)
    report.class_names = mapper.class_names

    # Pass 2: decode and check every object; records decode again lazily later.
    records = []
    for image_id, image_path, ann_path, ann in items:
        report.num_images += 1
        if ann is None:
            records.append(Record(image_id, image_path, 0, 0, instances=[]))
            continue
        size = ann.get("size") or {}
        records.append(chk.checked_record(
            image_id, image_path, size.get("height"), size.get("width"), report, check_images,
            mapper.class_names,
            parse=lambda h, w: _parse_objects(ann, ann_path, image_id, h, w, mapper, report),
            loader_for=lambda h, w: _make_loader(ann_path, image_id, h, w, mapper),
            tags=_image_tags(ann)))
    return DatasetRecords(mapper.class_names, records), report


def _image_tags(ann: Mapping[str, Any]) -> tuple[str, ...]:
    """The names of an annotation's image-level tags (``good``, ``bad``, ...)."""
    names = []
    for tag in ann.get("tags") or []:
        name = tag.get("name") if isinstance(tag, dict) else tag
        if isinstance(name, str) and name:
            names.append(name)
    return tuple(names)


def _make_loader(ann_path, image_id, height, width, mapper):
    def load() -> list[Instance]:
        ann = _read_json(ann_path)
        return [inst for inst, problem in
                _parse_objects(ann, ann_path, image_id, height, width, mapper, None)
                if inst is not None and problem is None]
    return load


# ---- writing -------------------------------------------------------------------------------
PALETTE = ("#E6194B", "#3CB44B", "#FFE119", "#4363D8", "#F58231", "#911EB4", "#46F0F0",
           "#F032E6", "#BCF60C", "#FABEBE")


def image_file_name(record: Record) -> str:
    """A flat, unique file name for a record's image (sub-folders become '__')."""
    name = record.image_id.replace("/", "__")
    ext = os.path.splitext(record.image_path)[1]
    if not name.lower().endswith(IMAGE_EXTS):
        name += ext
    return name


def write_supervisely(ds: DatasetRecords, out_dir: str, dataset_name: str = "ds",
                      progress: bool = False) -> str:
    """Write a Supervisely project (meta.json + one dataset) with bitmap geometries."""
    from tqdm import tqdm

    img_dir = os.path.join(out_dir, dataset_name, "img")
    ann_dir = os.path.join(out_dir, dataset_name, "ann")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    meta = {"classes": [{"title": n, "shape": "bitmap", "color": PALETTE[i % len(PALETTE)]}
                        for i, n in enumerate(ds.class_names)],
            "tags": [], "projectType": "images"}
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2)
    for rec in tqdm(ds.records, desc="supervisely", unit="img", disable=not progress):
        name = image_file_name(rec)
        dst = os.path.join(img_dir, name)
        if os.path.abspath(rec.image_path) != os.path.abspath(dst):
            shutil.copyfile(rec.image_path, dst)
        with open(os.path.join(ann_dir, name + ".json"), "w", encoding="utf-8") as fh:
            json.dump(annotation_json(rec, ds.class_names), fh)
    return out_dir


def annotation_json(rec: Record, class_names: Sequence[str]) -> dict:
    """A record's Supervisely annotation: every non-empty instance as a bitmap object."""
    objects = []
    for inst in rec.instances:
        if not inst.mask.any():
            continue
        data, origin = encode_bitmap(inst.mask)
        objects.append({
            "classTitle": class_names[inst.class_id - 1],
            "geometryType": "bitmap",
            "bitmap": {"data": data, "origin": origin},
            "tags": [{"name": "iscrowd", "value": None}] if inst.iscrowd else [],
        })
    return {"description": "", "tags": [{"name": t, "value": None} for t in rec.tags],
            "size": {"height": rec.height, "width": rec.width}, "objects": objects}
