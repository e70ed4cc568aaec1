"""COCO box and mask AP for Mask R-CNN detections, with pycocotools.

* :func:`records_to_coco` - ground truth (``DatasetRecords``-style records) as a COCO dict,
  masks as RLE; category id = our 1-based class id.
* :func:`detections_to_coco` - ``model.detect`` output (boxes y1, x1, y2, x2 in original
  pixels, 1-based class ids, scores, boolean masks) as COCO results.
* :func:`coco_evaluate` - both together through ``COCOeval`` for ``bbox`` and ``segm``:
  AP, AP50, AP75, AP_small/medium/large, AR100, per-class AP (``per_class``: IoU 0.50:0.95)
  and per-class AP50 (``per_class_AP50``), all areas, 100 detections. A statistic that
  COCO cannot compute (no ground truth of that size or class) is ``None``.
* :func:`evaluate_model` - runs ``model.detect`` image by image over records, then the above.
* :func:`flat_metrics` - the numbers for :func:`casting.metrics.format_eval_line`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from casting.masks import mask_to_bbox, mask_to_rle

log = logging.getLogger("casting.evaluation")

SUMMARY_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")
# indices into COCOeval.stats
_STAT_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "AP_small": 3, "AP_medium": 4, "AP_large": 5,
               "AR1": 6, "AR10": 7, "AR100": 8}
IOU_TYPES = ("bbox", "segm")
# Score threshold of the detections that COCO evaluation scores (see evaluate_model).
EVAL_MIN_CONFIDENCE = 0.05


def records_to_coco(records: Iterable[Any], class_names: Sequence[str]) -> dict[str, Any]:
    """Ground truth as a COCO dataset dict. Image ids are 1..N in record order."""
    images, annotations = [], []
    ann_id = 1
    for image_id, rec in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": rec.image_id,
                       "height": int(rec.height), "width": int(rec.width)})
        for inst in rec.instances:
            mask = np.asarray(inst.mask, dtype=bool)
            area = int(mask.sum())
            if area == 0:
                continue
            if mask.shape != (rec.height, rec.width):
                raise ValueError(f"{rec.image_id}: mask shape {mask.shape} != image "
                                 f"{(rec.height, rec.width)}")
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": int(inst.class_id),
                "segmentation": mask_to_rle(mask), "area": float(area),
                "bbox": mask_to_bbox(mask), "iscrowd": int(bool(inst.iscrowd)),
            })
            ann_id += 1
    categories = [{"id": i, "name": name} for i, name in enumerate(class_names, start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections_to_coco(detections: Sequence[dict[str, Any]],
                       image_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """``model.detect`` results (one dict per image) -> COCO result entries."""
    results = []
    ids = list(image_ids) if image_ids is not None else list(range(1, len(detections) + 1))
    for image_id, det in zip(ids, detections):
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        class_ids = np.asarray(det["class_ids"]).reshape(-1)
        scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        masks = det.get("masks")
        for k in range(len(boxes)):
            y1, x1, y2, x2 = boxes[k]
            entry = {"image_id": int(image_id), "category_id": int(class_ids[k]),
                     "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                     "score": float(scores[k])}
            if masks is not None:
                entry["segmentation"] = mask_to_rle(np.asarray(masks[k], dtype=bool))
            results.append(entry)
    return results


def _empty_summary(class_names: Sequence[str], has_gt: dict[str, bool], value) -> dict:
    out: dict[str, Any] = {name: value for name in SUMMARY_NAMES}
    out["AR100"] = value
    out["per_class"] = {name: (value if has_gt[name] else None) for name in class_names}
    out["per_class_AP50"] = dict(out["per_class"])
    return out


def _clean(value: float) -> float | None:
    value = float(value)
    return None if value < 0 else round(value, 6)


def _mean_precision(p: np.ndarray) -> float | None:
    p = p[p > -1]
    return round(float(p.mean()), 6) if p.size else None


def _per_class_ap(evaluator, class_names: Sequence[str]) -> tuple[dict, dict]:
    """(AP at IoU 0.50:0.95, AP at IoU 0.50) per class: all areas, 100 detections."""
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    t50 = int(np.argmin(np.abs(np.asarray(evaluator.params.iouThrs) - 0.5)))
    ap, ap50 = {}, {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        name = class_names[cat_id - 1]
        ap[name] = _mean_precision(precision[:, :, k, 0, -1])
        ap50[name] = _mean_precision(precision[t50, :, k, 0, -1])
    return ap, ap50


def coco_evaluate(gt: dict[str, Any], results: list[dict[str, Any]],
                  class_names: Sequence[str],
                  iou_types: Sequence[str] = IOU_TYPES) -> dict[str, Any]:
    """COCOeval over ``gt`` (from :func:`records_to_coco`) and ``results``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_counts = {name: 0 for name in class_names}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd"):
            gt_counts[class_names[ann["category_id"] - 1]] += 1
    has_gt = {name: count > 0 for name, count in gt_counts.items()}
    any_gt = any(has_gt.values())
    out: dict[str, Any] = {
        "num_images": len(gt["images"]),
        "num_gt_instances": gt_counts,
        "num_detections": len(results),
    }
    if not gt["images"]:
        raise ValueError("no images to evaluate")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {k: list(v) for k, v in gt.items()}
        coco_gt.createIndex()
    for iou_type in iou_types:
        usable = [r for r in results if iou_type == "bbox" or "segmentation" in r]
        if not any_gt:
            out[iou_type] = _empty_summary(class_names, has_gt, None)
            continue
        if not usable:  # nothing detected: AP is 0 where there is ground truth
            out[iou_type] = _empty_summary(class_names, has_gt, 0.0)
            continue
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            coco_dt = coco_gt.loadRes([dict(r) for r in usable])
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        log.debug("COCOeval %s:\n%s", iou_type, buf.getvalue())
        stats = evaluator.stats
        summary: dict[str, Any] = {name: _clean(stats[_STAT_INDEX[name]])
                                   for name in SUMMARY_NAMES}
        summary["AR100"] = _clean(stats[_STAT_INDEX["AR100"]])
        summary["per_class"], summary["per_class_AP50"] = _per_class_ap(evaluator,
                                                                         class_names)
        out[iou_type] = summary
    return out


def flat_metrics(result: dict[str, Any], per_class: bool = False) -> dict[str, float]:
    """``{"bbox_AP": ..., "segm_AP50": ...}`` (``None`` left out), optionally with
    ``segm_AP_<class>``."""
    flat: dict[str, float] = {}
    for iou_type in IOU_TYPES:
        summary = result.get(iou_type)
        if not summary:
            continue
        for name in SUMMARY_NAMES:
            if summary.get(name) is not None:
                flat[f"{iou_type}_{name}"] = summary[name]
        if per_class:
            for cls, value in summary.get("per_class", {}).items():
                key = "".join(ch if ch.isalnum() else "_" for ch in cls)
                if value is not None:
                    flat[f"{iou_type}_AP_{key}"] = value
    for name in ("catch_rate", "false_reject_rate"):
        if (result.get("parts") or {}).get(name) is not None:
            flat[f"part_{name}"] = result["parts"][name]
    return flat


def load_image(path: str, orientation: int = 1) -> np.ndarray:
    """A record's image as the training pipeline sees it (casting.images)."""
    from casting.images import read_rgb

    return read_rgb(path, orientation)


def evaluate_model(model: Any, records: Sequence[Any], class_names: Sequence[str],
                   max_images: int = 0, should_stop: Callable[[], bool] | None = None,
                   keep_images: int = 0, min_confidence: float | None = EVAL_MIN_CONFIDENCE,
                   policy: Any = None, tile: Any = None,
                   ) -> tuple[dict[str, Any], list[tuple[Any, np.ndarray, dict]]]:
    """Detect on each record's image and compute COCO metrics.

    ``min_confidence`` is the score threshold for the detections that are scored: COCO AP
    averages precision over all recall levels, so it is computed from every detection down
    to a low score (0.05, as the COCO reference detectors do; at most
    ``detection_max_instances`` per image), not only from those above the deployment
    threshold, which would cut recall short. ``None``: the model's own threshold.

    Returns ``(metrics, kept)`` where ``kept`` holds ``(record, image, detections)`` for the
    first ``keep_images`` images (for overlays). ``should_stop`` is polled between images;
    when it returns True evaluation stops with :class:`InterruptedError`. With a
    ``policy`` (casting.qc.Policy), ``metrics["parts"]`` holds the part-level figures
    (casting.qc.parts): defective parts caught, good parts rejected, and their curve.
    ``tile`` (a casting.tiling option, e.g. "on"): detect by tiles at native scale.
    """
    from casting import tiling

    spec = tiling.parse_tile(tile)
    records = list(records)
    if max_images and max_images > 0:
        records = records[:max_images]
    if not records:
        raise ValueError("no validation images to evaluate")
    detections, kept = [], []
    for i, rec in enumerate(records):
        if should_stop is not None and should_stop():
            raise InterruptedError("stop requested during evaluation")
        image = load_image(rec.image_path, getattr(rec, "orientation", 1))
        (det,) = tiling.detect(model, [image], spec, min_confidence)
        detections.append(det)
        if i < keep_images:
            kept.append((rec, image, det))
    gt = records_to_coco(records, class_names)
    metrics = coco_evaluate(gt, detections_to_coco(detections), class_names)
    if policy is not None:
        from casting.qc import part_evaluation

        metrics["parts"] = part_evaluation(records, detections, policy)
    return metrics, kept
