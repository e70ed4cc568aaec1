"""Batch prediction: a folder (or one file) of images -> COCO results JSON + overlay PNGs.

    python -m casting.predict --model MODEL_DIR --input IMAGES_OR_FILE --output OUT_DIR \
        [--min-score 0.5] [--classes holes,chipping] [--coco-gt annotations.json] \
        [--no-overlays] [--batch-size 4]

Writes, in OUT_DIR:
  results.json    COCO detection results: [{"image_id", "category_id", "bbox" (x, y, w, h),
                  "score", "segmentation" (RLE, counts as str)}, ...]
  images.json     {"images": [{"id", "file_name", "width", "height"}],
                   "categories": [{"id", "name"}]}: what the ids in results.json mean
  overlays/       one PNG per image: masks, boxes and "class score" labels over the image
  errors.json     only when some files could not be read: [{"file_name", "error"}]

Image ids are 1..N in sorted file order, or the ids of a COCO ground-truth file given with
--coco-gt (matched on file name), so results.json can be scored against it directly.
Category ids are the model's 1-based class ids.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from casting.files import write_atomic

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_images(path: str) -> list[str]:
    """A file -> [file]; a folder -> its image files (recursively), sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"input {path!r} is neither a file nor a folder")
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append(os.path.join(root, name))
    return sorted(found)


def _coco_ids(gt_path: str) -> dict[str, int]:
    with open(gt_path, encoding="utf-8") as fh:
        gt = json.load(fh)
    ids: dict[str, int] = {}
    for im in gt.get("images", []):
        ids[im["file_name"]] = int(im["id"])
        ids.setdefault(os.path.basename(im["file_name"]), int(im["id"]))
    return ids


def _write_json(path: str, data: Any) -> None:
    write_atomic(path, json.dumps(data))


def _coco_results(predictor: Any, raw: Any, image_id: int) -> list[dict[str, Any]]:
    """One image's detections as COCO results (masks as compressed RLE)."""
    from casting import masks as mask_utils

    rles = mask_utils.masks_to_rles(raw.masks)
    return [{"image_id": image_id, "category_id": det["class_id"], "bbox": det["bbox"],
             "score": det["score"], "segmentation": rles[k], "area": det["area"]}
            for k, det in enumerate(predictor.format(raw, mask_format="none"))]


def run(
    model_dir: str,
    input_path: str,
    output_dir: str,
    *,
    min_score: float | None = None,
    classes: Any = None,
    coco_gt: str | None = None,
    overlays: bool = True,
    batch_size: int = 1,
    progress: bool = True,
    predictor: Any = None,
) -> dict[str, Any]:
    """Predict every image under ``input_path``; returns a summary dict."""
    from tqdm import tqdm

    from casting.inference import InferenceError, Predictor, load_image, parse_classes, parse_min_score
    from casting.visualize import save_png

    files = find_images(input_path)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {input_path!r}")
    min_score = parse_min_score(min_score)
    predictor = predictor or Predictor(model_dir, warmup=False)
    class_ids = parse_classes(classes, predictor.class_names)
    base = input_path if os.path.isdir(input_path) else os.path.dirname(input_path)
    names = [os.path.relpath(f, base) for f in files]
    gt_ids = _coco_ids(coco_gt) if coco_gt else None

    os.makedirs(output_dir, exist_ok=True)
    overlay_dir = os.path.join(output_dir, "overlays")
    if overlays:
        os.makedirs(overlay_dir, exist_ok=True)

    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, file=sys.stderr)
    next_id = 1
    for start in range(0, len(files), max(1, batch_size)):
        chunk = list(zip(files[start:start + batch_size], names[start:start + batch_size]))
        arrays, kept = [], []
        for path, name in chunk:
            try:
                arrays.append(load_image(path, predictor.max_pixels))
                kept.append(name)
            except (InferenceError, OSError) as exc:
                errors.append({"file_name": name, "error": str(exc)})
        raws = predictor.detect(arrays, min_score=min_score, classes=class_ids) if arrays else []
        for name, arr, raw in zip(kept, arrays, raws):
            if gt_ids is not None:
                image_id = gt_ids.get(name, gt_ids.get(os.path.basename(name)))
                if image_id is None:
                    errors.append({"file_name": name, "error": "not in the --coco-gt images"})
                    continue
            else:
                image_id = next_id
                next_id += 1
            images.append({"id": image_id, "file_name": name, "width": raw.width,
                           "height": raw.height})
            results.extend(_coco_results(predictor, raw, image_id))
            if overlays:
                stem = os.path.splitext(name)[0].replace(os.sep, "__")
                save_png(predictor.overlay(arr, raw), os.path.join(overlay_dir, stem + ".png"))
        bar.update(len(chunk))
        bar.set_postfix(detections=len(results), errors=len(errors))
    bar.close()

    _write_json(os.path.join(output_dir, "results.json"), results)
    _write_json(
        os.path.join(output_dir, "images.json"),
        {
            "images": images,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(predictor.class_names)],
        },
    )
    if errors:
        _write_json(os.path.join(output_dir, "errors.json"), errors)
    return {"images": len(images), "detections": len(results), "errors": len(errors),
            "output": output_dir}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m casting.predict",
        description="Run a trained model over images: COCO results JSON + overlay PNGs.",
    )
    parser.add_argument("--model", required=True, help="model folder written by train.py")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="output folder (created)")
    parser.add_argument("--min-score", type=float, default=None,
                        help="keep detections scoring at least this (default: the model's "
                             "detection_min_confidence)")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class names (or 1-based ids) to keep")
    parser.add_argument("--coco-gt", default=None,
                        help="COCO annotations whose image ids to use (matched on file name)")
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from casting.inference import InferenceError

    try:
        summary = run(
            args.model, args.input, args.output,
            min_score=args.min_score, classes=args.classes, coco_gt=args.coco_gt,
            overlays=not args.no_overlays, batch_size=args.batch_size,
            progress=not args.quiet,
        )
    except (FileNotFoundError, InferenceError) as exc:
        print(f"predict: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 1 if summary["images"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
