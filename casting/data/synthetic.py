"""Synthetic top-view photos of cast pump impellers with exact instance masks.

Each image is rendered at twice the output size and downsampled: a mask pixel is set where
its defect covers at least half of the pixel, and the image pixels under it were drawn from
that same 2x mask, so masks match the photo exactly. Classes are the real data's:
`disk` (the whole part, minus chipping), `holes` (dark pits with a lit wall), `chipping`
(notches cut out of the rim or the lip) and `deburring` (ragged burrs outside the rim).

Everything is deterministic: image `i` of seed `s` depends only on (s, i).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
from PIL import Image
from scipy import ndimage

from casting.config import DEFAULT_CLASS_NAMES
from casting.data.records import DatasetRecords, Instance, Record
from casting.masks import mask_to_rle, rle_to_mask

CLASS_NAMES = tuple(DEFAULT_CLASS_NAMES)  # disk, holes, chipping, deburring
_CLASS_ID = {name: i + 1 for i, name in enumerate(CLASS_NAMES)}
MIN_AREA = 8  # output pixels; smaller instances are dropped


def _rough(rng: np.random.Generator, n: int = 6):
    """A random smooth periodic function of an angle, roughly in [-1, 1]."""
    amp = rng.normal(0, 1, n) / np.arange(1, n + 1) ** 0.7
    amp /= np.abs(amp).sum() + 1e-9
    phase = rng.uniform(0, 2 * np.pi, n)
    k = np.arange(1, n + 1)

    def f(theta):
        t = np.asarray(theta)[..., None]
        return (amp * np.cos(k * t + phase)).sum(-1)
    return f


class _Part:
    """Geometry of one rendered part at 2x resolution."""

    def __init__(self, rng: np.random.Generator, n: int):
        self.n = n
        self.cx = n / 2 + rng.normal(0, 0.012 * n)
        self.cy = n / 2 + rng.normal(0, 0.012 * n)
        radius = rng.uniform(0.33, 0.47) * n
        aspect = rng.uniform(0.94, 1.06)
        self.rx, self.ry = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
        self.radius = radius
        self.light = rng.uniform(0, 2 * np.pi)

    def polar(self, ys, xs):
        dx = (xs - self.cx) / self.rx
        dy = (ys - self.cy) / self.ry
        return np.sqrt(dx * dx + dy * dy), np.arctan2(dy, dx)

    def point(self, r, theta):
        return self.cy + r * self.ry * np.sin(theta), self.cx + r * self.rx * np.cos(theta)


def _window(n, cy, cx, half):
    y0, y1 = max(int(cy - half), 0), min(int(cy + half) + 2, n)
    x0, x1 = max(int(cx - half), 0), min(int(cx + half) + 2, n)
    return y0, y1, x0, x1


def defect_scale(size: int) -> float:
    """Output pixels per pixel of a real 512-px photo, for defect sizes and texture.

    Above 512 px everything grows with the image. From 512 down to 256 px the defects keep
    the pixel size they have in the real 512-px photos (chips ~150 px in area, burrs ~480):
    the part shrinks, the defects do not, so a small quick run learns defects of the size
    the model meets in real photos, not ones four times smaller in area. Below 256 px they
    shrink with the image (floored at 0.4) so that they still fit on the part.
    """
    return max(size / 512.0, min(1.0, size / 256.0), 0.4)


def render_casting(rng: np.random.Generator, size: int = 512, defects: bool = True):
    """-> (grey image uint8 [size, size], list of (class name, bool mask [size, size])).

    Drawn at 2x in this order (each step takes its random numbers from `rng` in turn, so an
    image depends only on the generator's state): the part's geometry, the background, the
    part's surface, chips, burrs, holes (none of the three when not `defects`: a good
    part), then the camera's blur and noise at 1x."""
    n = 2 * size
    px = 2.0 * defect_scale(size)  # one "512-image pixel" in 2x pixels
    part = _Part(rng, n)
    ys = np.arange(n, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(n, dtype=np.float32)[None, :] + 0.5
    r, th = part.polar(ys, xs)
    lit = np.cos(th - part.light).astype(np.float32)
    bg = _background(rng, n, ys, xs, r, lit)
    part_img = _surface(rng, part, r, th, lit, px)
    disk = r <= 1.0
    img = np.where(disk, part_img, bg).astype(np.float32)
    canvas = _Canvas(n)
    if defects:
        _draw_chips(rng, canvas, part, img, bg, disk, px)
        _draw_burrs(rng, canvas, part, img, disk, px)
        _draw_holes(rng, canvas, part, img, px)
    return _to_photo(rng, size, img, disk, canvas.instances)


def _background(rng, n, ys, xs, r, lit):
    """Flat grey, a gentle gradient, a soft shadow outside the rim."""
    bg_level = rng.uniform(130, 215)
    gy, gx = rng.uniform(-12, 12, 2)
    bg = bg_level + gy * (ys / n - 0.5) + gx * (xs / n - 0.5)
    shadow_w = 0.07
    shadow = np.clip(1 - (r - 1) / shadow_w, 0, 1) * (r >= 1) * (0.55 - 0.45 * lit)
    return bg - rng.uniform(25, 45) * shadow


def _surface(rng, part, r, th, lit, px):
    """The part's grey: its radial profile (r = fraction of its radius) lit from one side,
    lathe turning marks on the shroud and faint curved vanes in the dark eye."""
    bore = rng.uniform(105, 135)
    knots = [0.0, 0.14, 0.155, 0.17, 0.19, 0.27, 0.29, 0.305, 0.32, 0.54, 0.555, 0.57,
             0.59, 0.605, 0.625, 0.65, 0.93, 0.965, 1.0]
    grey = [bore, bore, 70, 180, 165, 158, 195, 90, 22, 20, 120, 190, 150, 45, 110, 168,
            172, 140, 80]
    light_amp = [0, 0, 10, 40, 35, 35, 40, 10, 3, 3, 30, 45, 35, 10, 25, 55, 55, 45, 30]
    base = np.interp(r, knots, grey).astype(np.float32)
    amp = np.interp(r, knots, light_amp).astype(np.float32)
    part_img = base + amp * lit * rng.uniform(0.7, 1.2)
    # Lathe turning marks on the shroud, period 3-6 px.
    period = rng.uniform(3, 6) * px
    r_px = r * part.radius
    shroud = ((r > 0.64) & (r < 0.95)).astype(np.float32)
    part_img += shroud * (rng.uniform(3, 6) * np.sin(2 * np.pi * r_px / period)
                          + 2 * lit * np.sin(2 * np.pi * r_px / (period * 2.7)))
    # Faint curved vanes in the dark eye (log-spiral).
    n_vanes = int(rng.integers(5, 9))
    twist = rng.uniform(2.0, 4.0) * rng.choice([-1, 1])
    eye = (r > 0.32) & (r < 0.54)
    phase = n_vanes * (th + twist * np.log(np.maximum(r, 1e-3))) + rng.uniform(0, 2 * np.pi)
    part_img += eye * (14 * np.clip((np.cos(phase) - 0.6) / 0.4, 0, 1) + 4 * lit)
    return part_img


class _Canvas:
    """The defects drawn so far at 2x: [class name, mask of its window, window]."""

    def __init__(self, n: int):
        self.n = n
        self.instances: list[list] = []

    def add(self, name, mask2, window):
        y0, y1, x0, x1 = window
        for other in self.instances:  # later defects overwrite earlier ones
            oy0, oy1, ox0, ox1 = other[2]
            iy0, iy1, ix0, ix1 = max(y0, oy0), min(y1, oy1), max(x0, ox0), min(x1, ox1)
            if iy0 < iy1 and ix0 < ix1:
                other[1][iy0 - oy0:iy1 - oy0, ix0 - ox0:ix1 - ox0] &= \
                    ~mask2[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
        self.instances.append([name, mask2, window])

    def local(self, cy, cx, half):
        """(window, its pixel-centre rows, columns) around (cy, cx)."""
        win = _window(self.n, cy, cx, half)
        y0, y1, x0, x1 = win
        ly = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        lx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
        return win, ly, lx


def _draw_chips(rng, canvas, part, img, bg, disk, px):
    """Chipping: notches out of the rim (filled with background) or the lip (dark eye);
    each is cut out of the `disk` mask."""
    for _ in range(min(rng.poisson(2.2), 6)):
        theta = rng.uniform(0, 2 * np.pi)
        on_lip = rng.random() < 0.35
        rc = 0.575 if on_lip else 1.0
        rb = rng.uniform(5.0, 14.0) * px * (0.7 if on_lip else 1.0)
        cy, cx = part.point(rc, theta)
        win, ly, lx = canvas.local(cy, cx, rb * 1.6 + 2)
        lr, lth = part.polar(ly, lx)
        rough = _rough(rng)
        d = np.sqrt((ly - cy) ** 2 + ((lx - cx) * rng.uniform(0.7, 1.3)) ** 2)
        blob = d < rb * (1 + 0.35 * rough(np.arctan2(ly - cy, lx - cx)))
        zone = (lr > 0.545) & (lr < 0.612) if on_lip else (lr <= 1.0)
        notch = blob & zone
        if not notch.any():
            continue
        y0, y1, x0, x1 = win
        sub = img[y0:y1, x0:x1]
        edge = ndimage.binary_dilation(notch, iterations=max(int(px), 1)) & ~notch & zone
        llit = np.cos(lth - part.light)
        sub[edge] *= 0.55 + 0.2 * llit[edge]
        fill = (rng.uniform(18, 35) if on_lip else bg[y0:y1, x0:x1])
        sub[notch] = (fill if np.isscalar(fill) else fill[notch])
        disk[y0:y1, x0:x1] &= ~notch
        canvas.add("chipping", notch, win)


def _draw_burrs(rng, canvas, part, img, disk, px):
    """Deburring: ragged extra metal outside the rim."""
    for _ in range(min(rng.poisson(1.4), 4)):
        theta = rng.uniform(0, 2 * np.pi)
        half_len = rng.uniform(8, 24) * px  # along the rim
        thick = rng.uniform(6, 18) * px  # outwards
        cy, cx = part.point(1.0 + thick / part.radius / 2, theta)
        win, ly, lx = canvas.local(cy, cx, half_len + thick + 2)
        lr, lth = part.polar(ly, lx)
        dang = np.angle(np.exp(1j * (lth - theta))) * part.radius  # arc length from centre
        rough, rough2 = _rough(rng, 12), _rough(rng, 24)
        taper = np.clip(1 - (dang / half_len) ** 2, 0, 1) ** 0.5
        reach = thick * taper * (0.75 + 0.8 * rough(lth * 12) + 0.5 * rough2(lth * 40))
        out = (lr - 1.0) * part.radius
        burr = (out > -0.5 * px) & (out < reach) & (np.abs(dang) < half_len)
        burr &= ~disk[win[0]:win[1], win[2]:win[3]]
        if not burr.any():
            continue
        y0, y1, x0, x1 = win
        llit = np.cos(lth - part.light)
        tex = ndimage.gaussian_filter(rng.normal(0, 40, burr.shape), px * 0.6)
        shade = (rng.uniform(85, 140) + 45 * llit + tex
                 - 30 * np.clip(out / (reach + 1e-3), 0, 1))
        img[y0:y1, x0:x1][burr] = shade[burr]
        canvas.add("deburring", burr, win)


def _draw_holes(rng, canvas, part, img, px):
    """Holes: dark round pits whose wall facing the light is lit."""
    for _ in range(min(rng.poisson(0.9), 3)):
        theta = rng.uniform(0, 2 * np.pi)
        rc = rng.uniform(0.68, 0.92) if rng.random() < 0.8 else rng.uniform(0.2, 0.27)
        rh = rng.uniform(5.0, 13.0) * px
        cy, cx = part.point(rc, theta)
        win, ly, lx = canvas.local(cy, cx, rh * 1.4 + 2)
        e = rng.uniform(0.8, 1.2)
        d = np.sqrt((ly - cy) ** 2 * e + (lx - cx) ** 2 / e)
        pit = d < rh
        if not pit.any():
            continue
        y0, y1, x0, x1 = win
        ang = np.arctan2(ly - cy, lx - cx)
        wall = np.clip(np.cos(ang - part.light - np.pi), 0, 1) * np.clip(d / rh, 0, 1) ** 2
        dark = rng.uniform(30, 70)
        value = dark + rng.uniform(110, 170) * wall
        img[y0:y1, x0:x1][pit] = value[pit]
        canvas.add("holes", pit, win)


def _to_photo(rng, size, img, disk, instances):
    """Downsample 2x (image by mean, masks by >= half coverage), blur and noise like the
    camera; -> (uint8 image, [(class name, mask)]) without instances under MIN_AREA."""
    def down(a):
        return a.reshape(size, 2, size, 2).mean(axis=(1, 3))

    out_img = down(img)
    out_img = ndimage.gaussian_filter(out_img, 0.7)
    out_img += rng.normal(0, 2.0, out_img.shape)
    out_img = np.clip(np.round(out_img), 0, 255).astype(np.uint8)

    masks = []
    disk_mask = down(disk.astype(np.float32)) >= 0.5
    defects = []
    for name, m2, (y0, y1, x0, x1) in instances:
        # downsample only the window, grown to even bounds
        ey0, ex0 = y0 - y0 % 2, x0 - x0 % 2
        ey1, ex1 = y1 + y1 % 2, x1 + x1 % 2
        win = np.zeros((ey1 - ey0, ex1 - ex0), dtype=np.float32)
        win[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0] = m2
        small = win.reshape(win.shape[0] // 2, 2, win.shape[1] // 2, 2).mean(axis=(1, 3))
        m = np.zeros((size, size), dtype=bool)
        m[ey0 // 2:ey1 // 2, ex0 // 2:ex1 // 2] = small >= 0.5
        defects.append((name, m))
    # Resolve overlaps created by rounding at 1x: later defects win over earlier ones;
    # chipping and burrs are not part of the disk, holes are.
    for k, (name, m) in enumerate(defects):
        for _, earlier in defects[:k]:
            earlier &= ~m
        if name != "holes":
            disk_mask &= ~m
    if disk_mask.sum() >= MIN_AREA:
        masks.append(("disk", disk_mask))
    masks.extend((name, m) for name, m in defects if m.sum() >= MIN_AREA)
    return out_img, masks


def _decode_loader(rles):
    def load() -> list[Instance]:
        return [Instance(cid, rle_to_mask(rle)) for cid, rle in rles]
    return load


def generate_records(count: int, seed: int, size: int = 512, out_dir: str | None = None,
                     progress: bool = False, good_fraction: float = 0.0) -> DatasetRecords:
    """Render `count` castings; JPEGs go to out_dir (a new temporary folder when None).

    Masks are kept as RLE in memory and decoded when `record.instances` is read. About
    `good_fraction` of the parts are drawn without defects; each record is tagged ``good``
    or ``bad`` (a part whose defects all fell below the minimum area is ``good``). Which
    parts are good is drawn from its own random stream, so the defective ones are the same
    images whatever the fraction.
    """
    from tqdm import tqdm

    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    if size < 32:
        raise ValueError(f"size must be >= 32, not {size}")
    if not 0.0 <= good_fraction <= 1.0:
        raise ValueError(f"good_fraction must be in [0, 1], not {good_fraction}")
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix=f"casting-synth-{seed}-")
    os.makedirs(out_dir, exist_ok=True)
    records = []
    for i in tqdm(range(count), desc="synth", unit="img", disable=not progress):
        rng = np.random.default_rng([seed, i])
        good = bool(np.random.default_rng([seed, i, 1]).random() < good_fraction)
        grey, masks = render_casting(rng, size, defects=not good)
        name = f"synth_{seed}_{i:05d}.jpg"
        path = os.path.join(out_dir, name)
        Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(
            path, format="JPEG", quality=int(rng.integers(90, 96)))
        rles = [(_CLASS_ID[cname], mask_to_rle(m)) for cname, m in masks]
        tag = "bad" if any(cname != "disk" for cname, _ in masks) else "good"
        records.append(Record(name, path, size, size, loader=_decode_loader(rles), tags=(tag,)))
    return DatasetRecords(CLASS_NAMES, records)


def write_synthetic(out: str, count: int, seed: int, fmt: str = "supervisely",
                    size: int = 512, progress: bool = False,
                    good_fraction: float = 0.0) -> list[str]:
    """Generate and write a Supervisely project and/or a COCO folder. Returns the paths."""
    from casting.data.coco import write_coco
    from casting.data.supervisely import write_supervisely

    if fmt not in ("supervisely", "coco", "both"):
        raise ValueError(f"format must be supervisely, coco or both, not {fmt!r}")
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="casting-synth-", dir=out)
    try:
        ds = generate_records(count, seed, size, out_dir=tmp, progress=progress,
                              good_fraction=good_fraction)
        written = []
        if fmt in ("supervisely", "both"):
            dst = os.path.join(out, "supervisely") if fmt == "both" else out
            written.append(write_supervisely(ds, dst, dataset_name="synthetic",
                                             progress=progress))
        if fmt in ("coco", "both"):
            dst = os.path.join(out, "coco") if fmt == "both" else out
            written.append(write_coco(ds, dst, progress=progress))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written
