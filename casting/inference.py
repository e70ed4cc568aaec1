"""Inference on a trained model folder: image decoding, filtering and JSON-ready detections.

``Predictor(model_dir)`` loads the folder ``train.py`` writes (``config.json`` +
``model.weights.h5``) once, warms the model up, and then answers ``predict`` calls from any
thread (calls into the model are serialised by a lock).

A detection, as ``predict`` returns it (all coordinates in original-image pixels, x = column,
y = row, far edges exclusive)::

    {"class_id": 2, "class_name": "holes", "score": 0.93,
     "box":  [x1, y1, x2, y2],          # corners
     "bbox": [x, y, width, height],     # the same box, COCO style
     "area": 312,                       # mask pixels (box area when masks are off)
     "mask": {"size": [H, W], "counts": "..."}}   # COCO RLE (mask_format="rle")

``mask_format="polygon"`` gives ``"mask": [[x1, y1, x2, y2, ...], ...]`` (COCO polygons) and
``mask_format="none"`` leaves ``mask`` out.
"""

from __future__ import annotations

import io
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from casting import masks as mask_utils
from casting.visualize import as_rgb_uint8

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "DEFAULT_MAX_PIXELS",
    "MASK_FORMATS",
    "InferenceError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "ParameterError",
    "decode_image",
    "load_image",
    "parse_classes",
    "parse_min_score",
    "parse_mask_format",
    "resolve_model_dir",
    "Predictor",
]

MAX_PAYLOAD_BYTES = 6_291_456  # SageMaker real-time payload limit (6 MiB)
# Largest decoded image accepted (pixels). Full-resolution masks are [K, H, W] booleans, so
# this bounds memory per request as well as decode time. Override: CASTING_MAX_IMAGE_PIXELS.
DEFAULT_MAX_PIXELS = 4096 * 4096
MASK_FORMATS = ("rle", "polygon", "none")
_MASK_FORMAT_ALIASES = {"rle": "rle", "polygon": "polygon", "polygons": "polygon", "none": "none"}


class InferenceError(ValueError):
    """A request that cannot be answered because of its content (a client error)."""


class ImageDecodeError(InferenceError):
    """The bytes are not an image PIL can decode (empty, truncated, corrupt, not an image)."""


class ImageTooLargeError(InferenceError):
    """The image decodes to more pixels than allowed."""


class ParameterError(InferenceError):
    """A request parameter (min_score, classes, mask_format) is not valid."""


# ---- images --------------------------------------------------------------------------------
def _max_pixels_default() -> int:
    value = os.environ.get("CASTING_MAX_IMAGE_PIXELS")
    return int(value) if value else DEFAULT_MAX_PIXELS


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.stack([arr] * 3, axis=-1))
    if im.mode != "RGB":
        # L / LA / P / PA / RGBA / CMYK / YCbCr ... -> RGB (alpha dropped).
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def decode_image(data: bytes | bytearray | memoryview, max_pixels: int | None = None) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, or anything else PIL reads) -> RGB uint8 HxWx3.

    Grayscale becomes three equal channels, alpha is dropped, the EXIF orientation is
    applied, and only the first frame of a multi-frame file is used. Raises
    ``ImageDecodeError`` (with the reason) or ``ImageTooLargeError``.
    """
    max_pixels = _max_pixels_default() if max_pixels is None else int(max_pixels)
    data = bytes(data)
    if not data:
        raise ImageDecodeError("empty image payload")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"cannot identify an image in {len(data)} bytes (expected JPEG or PNG)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the client's bytes
        raise ImageDecodeError(f"cannot read image: {exc}") from None
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    try:
        im.load()
        im = ImageOps.exif_transpose(im) or im
        return _to_rgb_array(im)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - truncated / corrupt data
        raise ImageDecodeError(f"cannot decode {im.format or 'image'} data: {exc}") from None


def load_image(source: Any, max_pixels: int | None = None) -> np.ndarray:
    """bytes, a file path, a PIL image or an array -> RGB uint8 HxWx3."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(source, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return decode_image(fh.read(), max_pixels)
    if isinstance(source, Image.Image):
        return _to_rgb_array(ImageOps.exif_transpose(source) or source)
    try:
        arr = as_rgb_uint8(source)
    except ValueError as exc:
        raise ImageDecodeError(str(exc)) from None
    limit = _max_pixels_default() if max_pixels is None else int(max_pixels)
    if arr.shape[0] * arr.shape[1] > limit:
        raise ImageTooLargeError(
            f"image is {arr.shape[1]}x{arr.shape[0]} pixels; the limit is {limit}"
        )
    return np.ascontiguousarray(arr)


# ---- parameters ----------------------------------------------------------------------------
def parse_min_score(value: Any) -> float | None:
    """None / "" -> None (the model's default); otherwise a float in [0, 1]."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ParameterError(f"min_score must be a number in [0, 1], not {value!r}")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"min_score must be a number in [0, 1], not {value!r}") from None
    if not 0.0 <= score <= 1.0:  # also rejects NaN
        raise ParameterError(f"min_score must be in [0, 1], not {score}")
    return score


def parse_mask_format(value: Any) -> str:
    if value is None or value == "":
        return "rle"
    if not isinstance(value, str) or value.strip().lower() not in _MASK_FORMAT_ALIASES:
        raise ParameterError(f"mask_format must be one of {list(MASK_FORMATS)}, not {value!r}")
    return _MASK_FORMAT_ALIASES[value.strip().lower()]


def parse_classes(value: Any, class_names: Sequence[str]) -> frozenset[int] | None:
    """Class filter -> set of 1-based class ids, or None for all classes.

    Accepts names or 1-based ids, as a list or a comma-separated string.
    """
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        items: Iterable[Any] = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ParameterError(
            f"classes must be a list of class names or ids (or a comma-separated string), "
            f"not {value!r}"
        )
    ids = set()
    for item in items:
        if isinstance(item, bool):
            raise ParameterError(f"bad class {item!r}")
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            cid = int(item)
            if not 1 <= cid <= len(class_names):
                raise ParameterError(
                    f"class id {cid} out of range 1..{len(class_names)} ({list(class_names)})"
                )
            ids.add(cid)
        elif isinstance(item, str) and item in class_names:
            ids.add(class_names.index(item) + 1)
        else:
            raise ParameterError(f"unknown class {item!r}; classes are {list(class_names)}")
    return frozenset(ids) if ids else None


# ---- model folder --------------------------------------------------------------------------
def resolve_model_dir(path: str | os.PathLike) -> str:
    """The folder holding ``config.json``: ``path`` itself, or its only sub-folder that has
    one (an unpacked model.tar.gz may nest the files). Raises FileNotFoundError."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path!r} does not exist")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    nested = [
        os.path.join(path, d)
        for d in sorted(os.listdir(path))
        if os.path.isfile(os.path.join(path, d, "config.json"))
    ]
    if len(nested) == 1:
        return nested[0]
    raise FileNotFoundError(
        f"no config.json in model folder {path!r} (contents: {sorted(os.listdir(path))[:20]})"
    )


# ---- predictor -----------------------------------------------------------------------------
@dataclass
class RawDetections:
    """Model output for one image after filtering: numpy arrays in original pixels."""

    boxes: np.ndarray  # float32 [K, 4] (y1, x1, y2, x2)
    class_ids: np.ndarray  # int32 [K], 1-based
    scores: np.ndarray  # float32 [K]
    masks: np.ndarray  # bool [K, H, W]
    height: int
    width: int


class Predictor:
    """A loaded model and the code that turns its output into JSON-ready detections."""

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        *,
        model: Any = None,
        max_pixels: int | None = None,
        warmup: bool = True,
    ) -> None:
        if (model_dir is None) == (model is None):
            raise ValueError("give exactly one of model_dir or model")
        started = time.monotonic()
        if model is None:
            from casting.quiet import import_tensorflow

            import_tensorflow()  # slow, so only when needed; without CPU start-up noise
            from casting.model import load_model_dir

            self.model_dir: str | None = resolve_model_dir(model_dir)
            model = load_model_dir(self.model_dir)
        else:
            self.model_dir = None
        self.model = model
        self.config = model.config
        self.class_names: tuple[str, ...] = tuple(self.config.class_names)
        self.max_pixels = _max_pixels_default() if max_pixels is None else int(max_pixels)
        self._lock = threading.Lock()
        if warmup:
            # Trace/compile the inference graph now, so the first request is not the slow one.
            size = min(int(self.config.image_size), 256)
            self.detect([np.zeros((size, size, 3), dtype=np.uint8)])
        self.load_seconds = time.monotonic() - started

    # -- raw ---------------------------------------------------------------------------------
    def detect(
        self,
        images: Sequence[Any],
        min_score: float | None = None,
        classes: Any = None,
    ) -> list[RawDetections]:
        """Images (bytes / path / PIL / array) -> filtered raw detections, one per image."""
        min_score = parse_min_score(min_score)
        class_ids = (
            classes
            if isinstance(classes, frozenset)
            else parse_classes(classes, self.class_names)
        )
        arrays = [load_image(im, self.max_pixels) for im in images]
        if not arrays:
            return []
        # The model keeps scores strictly above its threshold; min_score is inclusive ("at
        # least"), so ask the model for one float32 step less and filter here.
        model_threshold = None
        if min_score is not None:
            model_threshold = float(np.nextafter(np.float32(min_score), np.float32(-1.0)))
            model_threshold = max(model_threshold, 0.0)
        with self._lock:
            outputs = self.model.detect(arrays, min_confidence=model_threshold)
        results = []
        for arr, out in zip(arrays, outputs):
            boxes = np.asarray(out["boxes"], dtype=np.float32).reshape(-1, 4)
            ids = np.asarray(out["class_ids"], dtype=np.int32).reshape(-1)
            scores = np.asarray(out["scores"], dtype=np.float32).reshape(-1)
            masks = np.asarray(out["masks"]).astype(bool, copy=False)
            if masks.size == 0:
                masks = np.zeros((len(ids),) + arr.shape[:2], dtype=bool)
            keep = np.ones(len(ids), dtype=bool)
            if min_score is not None:
                keep &= scores >= np.float32(min_score)
            if class_ids is not None:
                keep &= np.isin(ids, sorted(class_ids))
            order = np.argsort(-scores[keep], kind="stable")
            results.append(
                RawDetections(
                    boxes=boxes[keep][order],
                    class_ids=ids[keep][order],
                    scores=scores[keep][order],
                    masks=masks[keep][order],
                    height=int(arr.shape[0]),
                    width=int(arr.shape[1]),
                )
            )
        return results

    # -- JSON --------------------------------------------------------------------------------
    def format(self, raw: RawDetections, mask_format: str = "rle") -> list[dict[str, Any]]:
        """Raw detections -> list of JSON-ready dicts (see the module docstring)."""
        mask_format = parse_mask_format(mask_format)
        rles = mask_utils.masks_to_rles(raw.masks) if mask_format == "rle" else None
        out = []
        for k in range(len(raw.class_ids)):
            y1, x1, y2, x2 = (float(v) for v in raw.boxes[k])
            x1, x2 = np.clip([x1, x2], 0.0, raw.width)
            y1, y2 = np.clip([y1, y2], 0.0, raw.height)
            cid = int(raw.class_ids[k])
            det: dict[str, Any] = {
                "class_id": cid,
                "class_name": (
                    self.class_names[cid - 1] if 1 <= cid <= len(self.class_names) else str(cid)
                ),
                "score": float(raw.scores[k]),
                "box": [round(float(v), 2) for v in (x1, y1, x2, y2)],
                "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                "area": int(raw.masks[k].sum()),
            }
            if mask_format == "rle":
                det["mask"] = rles[k]
            elif mask_format == "polygon":
                det["mask"] = mask_utils.mask_to_polygons(raw.masks[k], tolerance=0.5)
            out.append(det)
        return out

    def predict(
        self,
        image: Any,
        min_score: float | None = None,
        classes: Any = None,
        mask_format: str = "rle",
    ) -> list[dict[str, Any]]:
        """One image -> list of detections (highest score first)."""
        mask_format = parse_mask_format(mask_format)
        (raw,) = self.detect([image], min_score=min_score, classes=classes)
        return self.format(raw, mask_format)

    def predict_batch(
        self,
        images: Sequence[Any],
        min_score: float | None = None,
        classes: Any = None,
        mask_format: str = "rle",
    ) -> list[list[dict[str, Any]]]:
        mask_format = parse_mask_format(mask_format)
        return [self.format(r, mask_format) for r in self.detect(images, min_score, classes)]

    def overlay(
        self, image: np.ndarray, raw: RawDetections, show_labels: bool = True
    ) -> np.ndarray:
        """The image with ``raw``'s masks, boxes and labels drawn on it (uint8 HxWx3)."""
        from casting.visualize import draw_detections

        return draw_detections(
            load_image(image, self.max_pixels),
            boxes=raw.boxes,
            class_ids=raw.class_ids,
            scores=raw.scores,
            masks=raw.masks,
            class_names=self.class_names,
            box_format="yxyx",
            show_labels=show_labels,
        )
