"""Inference on a trained model folder: detections, filtering, the verdict on each part
(casting.qc) and JSON-ready output. A request's images and parameters: casting.inputs.

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
``mask_format="none"`` leaves ``mask`` out. ``judge`` adds each image's `casting.qc.Verdict`
by the predictor's policy (the argument, $CASTING_POLICY, the folder's policy.json, or the
default). ``tile`` (casting.tiling; default $CASTING_TILE, else off) runs large images by
tiles at native scale, with the same output.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from casting import masks as mask_utils
from casting import tiling
from casting.inputs import (  # noqa: F401 - a request's images and parameters, checked
    DEFAULT_MAX_PIXELS, MASK_FORMATS, MAX_PAYLOAD_BYTES, ImageDecodeError, ImageTooLargeError,
    InferenceError, ParameterError, _max_pixels_default, decode_image, load_image,
    parse_classes, parse_mask_format, parse_min_score,
)

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
        policy: Any = None,
        tile: Any = None,
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
        self.policy = self._default_policy(policy)
        # Inference by tiles (casting.tiling): the argument, else $CASTING_TILE; off if unset.
        self.tile = tiling.tile_default() if tile is None else tiling.parse_tile(tile)
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
        tile: Any = None,
    ) -> list[RawDetections]:
        """Images (bytes / path / PIL / array) -> filtered raw detections, one per image.
        ``tile``: a casting.tiling option for this call (None: the predictor's)."""
        min_score = parse_min_score(min_score)
        class_ids = self._class_ids(classes)
        spec = self.tile_for(tile)
        arrays = [load_image(im, self.max_pixels) for im in images]
        return [_filtered(raw, min_score, class_ids) for raw in self._run(arrays, min_score,
                                                                          spec)]

    def tile_for(self, tile: Any = None) -> Any:
        """A call's tiling: None -> this predictor's; else parsed (ParameterError if bad)."""
        return self.tile if tile is None else tiling.parse_tile(tile)

    def _class_ids(self, classes: Any) -> frozenset[int] | None:
        """A class filter already parsed (a frozenset of ids), or parsed here."""
        return classes if isinstance(classes, frozenset) else parse_classes(classes,
                                                                            self.class_names)

    def _run(self, arrays: list[np.ndarray], min_score: float | None,
             tile: Any = None) -> list[RawDetections]:
        """The model's detections at ``min_score`` and above (None: its own threshold), all
        classes, highest score first."""
        if not arrays:
            return []
        # The model keeps scores strictly above its threshold; min_score is inclusive ("at
        # least"), so ask the model for one float32 step less and filter here.
        model_threshold = None
        if min_score is not None:
            model_threshold = float(np.nextafter(np.float32(min_score), np.float32(-1.0)))
            model_threshold = max(model_threshold, 0.0)
        with self._lock:
            outputs = tiling.detect(self.model, arrays, tile, model_threshold)
        results = []
        for arr, out in zip(arrays, outputs):
            ids = np.asarray(out["class_ids"], dtype=np.int32).reshape(-1)
            masks = np.asarray(out["masks"]).astype(bool, copy=False)
            if masks.size == 0:
                masks = np.zeros((len(ids),) + arr.shape[:2], dtype=bool)
            raw = RawDetections(
                boxes=np.asarray(out["boxes"], dtype=np.float32).reshape(-1, 4),
                class_ids=ids, scores=np.asarray(out["scores"], dtype=np.float32).reshape(-1),
                masks=masks, height=int(arr.shape[0]), width=int(arr.shape[1]))
            results.append(_filtered(raw, min_score, None))
        return results

    # -- the verdict -------------------------------------------------------------------------
    def _default_policy(self, policy: Any) -> Any:
        """The argument, else $CASTING_POLICY (a file or inline JSON), else the model
        folder's policy.json, else the default policy (casting.qc.policy)."""
        from casting.qc import POLICY_FILE, load_policy

        if policy is None:
            policy = os.environ.get("CASTING_POLICY") or None
        if policy is None and self.model_dir is not None:
            path = os.path.join(self.model_dir, POLICY_FILE)
            policy = path if os.path.isfile(path) else None
        return load_policy(policy, self.class_names)

    def policy_for(self, policy: Any = None) -> Any:
        """A request's policy: ``None`` -> this predictor's; otherwise a policy (JSON text,
        dict, file) checked against this model's classes (PolicyError when it is not valid)."""
        from casting.qc import load_policy

        return self.policy if policy is None else load_policy(policy, self.class_names)

    def judge(
        self,
        images: Sequence[Any],
        min_score: float | None = None,
        classes: Any = None,
        policy: Any = None,
        tile: Any = None,
    ) -> list[tuple[RawDetections, Any]]:
        """Images -> (filtered raw detections, `casting.qc.Verdict`) per image.

        The verdict looks at every class down to the policy's lowest score, whatever
        ``min_score`` and ``classes`` keep for display."""
        min_score = parse_min_score(min_score)
        class_ids = self._class_ids(classes)
        policy = self.policy_for(policy)
        spec = self.tile_for(tile)
        from casting.qc import judge

        shown = (float(self.config.detection_min_confidence) if min_score is None
                 else min_score)
        arrays = [load_image(im, self.max_pixels) for im in images]
        out = []
        for raw in self._run(arrays, min(shown, policy.lowest_score), spec):
            verdict = judge(policy, raw.class_ids, raw.scores, raw.masks)
            out.append((_filtered(raw, shown, class_ids), verdict))
        return out

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
        tile: Any = None,
    ) -> list[dict[str, Any]]:
        """One image -> list of detections (highest score first)."""
        mask_format = parse_mask_format(mask_format)
        (raw,) = self.detect([image], min_score=min_score, classes=classes, tile=tile)
        return self.format(raw, mask_format)

    def predict_batch(
        self,
        images: Sequence[Any],
        min_score: float | None = None,
        classes: Any = None,
        mask_format: str = "rle",
        tile: Any = None,
    ) -> list[list[dict[str, Any]]]:
        mask_format = parse_mask_format(mask_format)
        return [self.format(r, mask_format)
                for r in self.detect(images, min_score, classes, tile)]

    def overlay(
        self, image: np.ndarray, raw: RawDetections, show_labels: bool = True,
        verdict: Any = None,
    ) -> np.ndarray:
        """The image with ``raw``'s masks, boxes and labels drawn on it (uint8 HxWx3), and
        the verdict's banner on top when one is given."""
        from casting.visualize import draw_detections, draw_verdict

        drawn = draw_detections(
            load_image(image, self.max_pixels),
            boxes=raw.boxes,
            class_ids=raw.class_ids,
            scores=raw.scores,
            masks=raw.masks,
            class_names=self.class_names,
            box_format="yxyx",
            show_labels=show_labels,
        )
        return drawn if verdict is None else draw_verdict(drawn, verdict)


def _filtered(raw: RawDetections, min_score: float | None,
              class_ids: frozenset[int] | None) -> RawDetections:
    """The detections scoring at least ``min_score`` of the classes ``class_ids`` (None: no
    limit), highest score first."""
    keep = np.ones(len(raw.class_ids), dtype=bool)
    if min_score is not None:
        keep &= raw.scores >= np.float32(min_score)
    if class_ids is not None:
        keep &= np.isin(raw.class_ids, sorted(class_ids))
    order = np.argsort(-raw.scores[keep], kind="stable")
    return RawDetections(boxes=raw.boxes[keep][order], class_ids=raw.class_ids[keep][order],
                         scores=raw.scores[keep][order], masks=raw.masks[keep][order],
                         height=raw.height, width=raw.width)
