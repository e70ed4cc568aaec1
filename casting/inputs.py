"""What a prediction request brings, checked: image bytes decoded to RGB arrays (within a
pixel limit), and the request parameters (``min_score``, ``classes``, ``mask_format``).

Problems raise an `InferenceError` subclass whose message says what was wrong; the endpoint
answers them with 400 or 413, the CLI lists them in errors.json. ``casting.inference``
re-exports every name here.
"""

from __future__ import annotations

import io
import os
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from casting.visualize import as_rgb_uint8

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
