"""Dataset checks shared by the loaders, the check report, and the class map.

Every problem names the file it was found in. `load_dataset(..., on_error="raise")` raises a
`DatasetError` whose message is the whole report; `on_error="skip"` drops the bad items
(whole images for image-level problems, single objects otherwise) and logs how many.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from casting.images import orientation_for, read_header, upright_size

log = logging.getLogger("casting.data")

# Kinds of problem. The image-level ones make the whole image unusable.
UNREADABLE_IMAGE = "unreadable image"
SIZE_MISMATCH = "size mismatch"
BAD_ANNOTATION = "bad annotation"
MISSING_ANNOTATION = "missing annotation"
MASK_OUTSIDE = "mask outside the image"
EMPTY_MASK = "empty mask"
UNKNOWN_CLASS = "unknown class"
IMAGE_LEVEL_KINDS = (UNREADABLE_IMAGE, SIZE_MISMATCH, BAD_ANNOTATION, MISSING_ANNOTATION)


@dataclass(frozen=True)
class Problem:
    kind: str
    file: str
    message: str
    image_id: str | None = None

    @property
    def image_level(self) -> bool:
        return self.kind in IMAGE_LEVEL_KINDS

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}: {self.message}"


@dataclass
class Report:
    """What a loader found: counts, sizes, problems and skipped-but-harmless things."""

    source: str
    format: str
    class_names: tuple[str, ...] = ()
    num_images: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    crowd_counts: dict[str, int] = field(default_factory=dict)
    areas: dict[str, list[int]] = field(default_factory=dict)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: collections.Counter = field(default_factory=collections.Counter)
    dropped_classes: collections.Counter = field(default_factory=collections.Counter)
    images_without_objects: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add_instance(self, class_name: str, area: int, iscrowd: bool) -> None:
        if iscrowd:
            self.crowd_counts[class_name] = self.crowd_counts.get(class_name, 0) + 1
        else:
            self.counts[class_name] = self.counts.get(class_name, 0) + 1
        self.areas.setdefault(class_name, []).append(int(area))

    def add_image_objects(self, parsed, class_names: Sequence[str]) -> None:
        """Record one image's parsed ``(instance, problem)`` pairs: each problem, each
        usable instance; the image counts as without objects when none is usable."""
        good = 0
        for inst, problem in parsed:
            if problem is not None:
                self.problems.append(problem)
            elif inst is not None:
                good += 1
                self.add_instance(class_names[inst.class_id - 1], inst.area, inst.iscrowd)
        if good == 0:
            self.images_without_objects += 1

    def text(self) -> str:
        lines = [f"Dataset {self.source} ({self.format}): {self.num_images} images"]
        if self.image_sizes:
            hs = np.array([s[0] for s in self.image_sizes])
            ws = np.array([s[1] for s in self.image_sizes])
            lines.append(
                f"  image height {hs.min()}-{hs.max()} (median {int(np.median(hs))}), "
                f"width {ws.min()}-{ws.max()} (median {int(np.median(ws))})"
            )
        if self.images_without_objects:
            lines.append(f"  images without objects: {self.images_without_objects}")
        lines.append("  class        objects  crowd  area min / median / max (px)")
        for name in self.class_names:
            areas = self.areas.get(name, [])
            stats = (f"{min(areas)} / {int(np.median(areas))} / {max(areas)}"
                     if areas else "-")
            lines.append(f"  {name:<12} {self.counts.get(name, 0):>7}  "
                         f"{self.crowd_counts.get(name, 0):>5}  {stats}")
        for name, n in sorted(self.dropped_classes.items()):
            lines.append(f"  dropped by the class map: {name} ({n} objects)")
        for what, n in sorted(self.warnings.items()):
            lines.append(f"  warning: {what} ({n})")
        if self.problems:
            by_kind = collections.Counter(p.kind for p in self.problems)
            summary = ", ".join(f"{k}: {n}" for k, n in sorted(by_kind.items()))
            count = len(self.problems)
            lines.append(f"{count} problem{'' if count == 1 else 's'} ({summary}):")
            lines.extend(f"  {p}" for p in self.problems)
            lines.append("To go on without the broken images and objects: train.py "
                         "--on-data-error skip, or write a clean copy with python -m "
                         "casting.data convert SRC DST --skip-bad; or fix the files named "
                         "above.")
        else:
            lines.append("No problems found.")
        return "\n".join(lines)


class ClassMapper:
    """Maps source class names to 1-based ids through an optional user class map.

    `class_map` renames or merges ({"holes": "blowhole"}) and drops (value None); names not
    in it keep their own name. `class_names` fixes the output order; a (mapped) name not in
    it is an "unknown class" problem. `known` are the classes the source declares (e.g.
    Supervisely meta.json); a name outside them is an unknown class too.
    """

    def __init__(
        self,
        source_names: Sequence[str],
        class_map: Mapping[str, str | None] | None = None,
        class_names: Sequence[str] | None = None,
        known: Iterable[str] | None = None,
    ) -> None:
        self.class_map = dict(class_map or {})
        self.known = set(known) if known is not None else None
        if class_names is not None:
            names = tuple(class_names)
            if len(set(names)) != len(names):
                raise ValueError(f"class_names has duplicates: {list(names)}")
        else:
            names = []
            for raw in source_names:
                mapped = self.class_map.get(raw, raw)
                if mapped is not None and mapped not in names:
                    names.append(mapped)
            names = tuple(names)
        self.class_names = names
        self._ids = {name: i + 1 for i, name in enumerate(names)}

    def resolve(self, raw: str) -> tuple[int | None, str | None]:
        """(class id, None); (None, None) when the class map drops it; (None, error)."""
        if self.known is not None and raw not in self.known and raw not in self.class_map:
            return None, f"class {raw!r} is not declared in meta.json ({sorted(self.known)})"
        mapped = self.class_map.get(raw, raw)
        if mapped is None:
            return None, None
        if mapped not in self._ids:
            shown = f"{raw!r}" if mapped == raw else f"{raw!r} (mapped to {mapped!r})"
            return None, (f"class {shown} is not in class_names {list(self.class_names)}; "
                          f"map it to None in the class map to drop it")
        return self._ids[mapped], None


def class_outcome(class_id: int | None, error: str | None, path: str, where: str,
                  image_id: str, report: "Report | None", name: str):
    """For an object whose class resolved to ``(class_id, error)`` (``ClassMapper.resolve``):
    ``None`` when the object is to be read, else the ``(mask, problem)`` entry that stands
    for it: an unknown-class problem, or ``(None, None)`` when the class map drops the
    class (counted under ``name`` in ``report.dropped_classes``)."""
    if error:
        return None, Problem(UNKNOWN_CLASS, path, f"{where}: {error}", image_id)
    if class_id is None:
        if report is not None:
            report.dropped_classes[name] += 1
        return None, None
    return None


def check_image_file(path: str, height: int | None, width: int | None) -> Problem | None:
    """Decode the image fully; report an unreadable file or a size that is neither the
    upright (EXIF-oriented) one nor the raw one (casting.images)."""
    try:
        with Image.open(path) as im:
            im.load()
        h, w, orientation = read_header(path)
    except FileNotFoundError:
        return Problem(UNREADABLE_IMAGE, path, "file not found")
    except Exception as exc:  # PIL raises many kinds for broken files
        return Problem(UNREADABLE_IMAGE, path, f"cannot decode ({type(exc).__name__}: {exc})")
    if orientation_for(h, w, orientation, height, width) is None:
        uh, uw = upright_size(h, w, orientation)
        turned = f" ({uh}x{uw} upright, EXIF orientation {orientation})" \
            if orientation != 1 else ""
        return Problem(SIZE_MISMATCH, path, f"image is {h}x{w} (HxW){turned} but the "
                                            f"annotation says {height}x{width}")
    return None


def image_header(path: str) -> tuple[int, int, int] | None:
    """(raw height, raw width, EXIF orientation) from the header, None when unreadable."""
    try:
        return read_header(path)
    except Exception:
        return None


def place_mask(local: np.ndarray, x0: int, y0: int, height: int, width: int
               ) -> tuple[np.ndarray, bool]:
    """Paste a local bool mask with top-left (x0, y0) into an HxW canvas.

    Returns (mask, outside) where outside is True when set pixels fell outside the canvas
    (they are clipped).
    """
    mask = np.zeros((height, width), dtype=bool)
    lh, lw = local.shape
    ys, ye = max(y0, 0), min(y0 + lh, height)
    xs, xe = max(x0, 0), min(x0 + lw, width)
    total = int(np.count_nonzero(local))
    if ys < ye and xs < xe:
        mask[ys:ye, xs:xe] = local[ys - y0:ye - y0, xs - x0:xe - x0]
    outside = int(np.count_nonzero(mask)) != total
    return mask, outside


def apply_on_error(ds, report: Report, on_error: str):
    """Raise with the report, or drop the bad items (logging what was dropped)."""
    from casting.data.records import DatasetError  # local import: avoid a cycle

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if report.ok:
        return ds
    if on_error == "raise":
        raise DatasetError(report.text())
    bad_images = {p.image_id for p in report.problems if p.image_level}
    kept = [r for r in ds.records if r.image_id not in bad_images]
    n_obj = sum(1 for p in report.problems if not p.image_level)
    shown = "\n".join(f"  {p}" for p in report.problems[:20])
    more = len(report.problems) - 20
    log.warning(
        "%s: skipping %d of %d images and %d objects with problems:\n%s%s",
        report.source, len(ds.records) - len(kept), len(ds.records), n_obj, shown,
        f"\n  ... and {more} more" if more > 0 else "",
    )
    ds.records = kept
    return ds


def settle_image_size(image_path, height, width, image_id, report, check_images: bool):
    """Check an image file (when asked) against the size its annotation gives, and settle
    its (height, width, orientation): the annotation's size, else the file's upright size,
    and the EXIF orientation that gives the image that size (casting.images). Problems go
    into `report`; returns None when the size cannot be known (the image is unreadable)."""
    if check_images:
        problem = check_image_file(image_path, height, width)
        if problem is not None:
            report.problems.append(Problem(problem.kind, problem.file, problem.message, image_id))
    header = image_header(image_path)
    if header is None:
        if height is None or width is None:
            if not check_images:
                report.problems.append(Problem(UNREADABLE_IMAGE, image_path,
                                               "cannot read the image", image_id))
            return None
        orientation = 1
    else:
        orientation = orientation_for(*header, height, width) or 1
        if height is None or width is None:
            height, width = upright_size(*header)
    height, width = int(height), int(width)
    report.image_sizes.append((height, width))
    return height, width, orientation


def checked_record(image_id, image_path, height, width, report, check_images: bool,
                   class_names: Sequence[str], parse, loader_for, **fields):
    """The Record of one annotated image, its size settled (settle_image_size) and its
    objects checked into `report`: `parse(height, width)` gives their (instance, problem)
    pairs now, `loader_for(height, width)` the loader that decodes them again when training
    reads them. An image whose size cannot be known gives an empty record. `fields` go to
    the Record (e.g. source_id)."""
    from casting.data.records import Record  # local import: avoid a cycle

    size = settle_image_size(image_path, height, width, image_id, report, check_images)
    if size is None:
        return Record(image_id, image_path, 0, 0, instances=[])
    height, width, orientation = size
    report.add_image_objects(parse(height, width), class_names)
    return Record(image_id, image_path, height, width, loader=loader_for(height, width),
                  orientation=orientation, **fields)
