"""Batch prediction: a folder (or one file) of images -> COCO results JSON + overlay PNGs.

    python -m casting.predict --model MODEL_DIR --input IMAGES_OR_FILE --output OUT_DIR \
        [--min-score 0.5] [--classes holes,chipping] [--coco-gt annotations.json] \
        [--no-overlays] [--batch-size 4] [--policy policy.json] [--tile auto]

Writes, in OUT_DIR:
  results.json    COCO detection results: [{"image_id", "category_id", "bbox" (x, y, w, h),
                  "score", "segmentation" (RLE, counts as str)}, ...]
  images.json     {"images": [{"id", "file_name", "width", "height"}],
                   "categories": [{"id", "name"}]}: what the ids in results.json mean
  report.csv      one row per image: file_name, verdict (accept / reject by the policy),
                  <class>_count for each defect class, largest_area_px, largest_class, reasons
  overlays/       one PNG per image: masks, boxes and "class score" labels over the image,
                  and the verdict on a banner across the top
  errors.json     only when some files could not be read: [{"file_name", "error"}]

Image ids are 1..N in sorted file order, or the ids of a COCO ground-truth file given with
--coco-gt (matched on file name), so results.json can be scored against it directly.
Category ids are the model's 1-based class ids. The policy (casting.qc.policy) is
--policy, else $CASTING_POLICY, else the model folder's policy.json, else the default one.
--tile (casting.tiling: "on", "auto", "tile_size=512,overlap=64,full_pass=0", ...) runs
large images by tiles at native scale; default $CASTING_TILE, else off.
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
    policy: Any = None,
    tile: Any = None,
) -> dict[str, Any]:
    """Predict every image under ``input_path``; returns a summary dict."""
    from tqdm import tqdm

    from casting.inference import Predictor, parse_classes, parse_min_score
    from casting.qc.report import write_report_csv

    files = find_images(input_path)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {input_path!r}")
    min_score = parse_min_score(min_score)
    predictor = predictor or Predictor(model_dir, warmup=False)
    policy = predictor.policy_for(policy)
    tile = predictor.tile_for(tile)
    class_ids = parse_classes(classes, predictor.class_names)
    base = input_path if os.path.isdir(input_path) else os.path.dirname(input_path)
    names = [os.path.relpath(f, base) for f in files]
    out = _Outputs(predictor, output_dir, overlays,
                   _coco_ids(coco_gt) if coco_gt else None)
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, file=sys.stderr)
    for start in range(0, len(files), max(1, batch_size)):
        chunk = list(zip(files[start:start + batch_size], names[start:start + batch_size]))
        arrays, kept = out.read(chunk)
        judged = (predictor.judge(arrays, min_score=min_score, classes=class_ids, policy=policy,
                                  tile=tile) if arrays else [])
        for name, arr, (raw, verdict) in zip(kept, arrays, judged):
            out.add(name, arr, raw, verdict)
        bar.update(len(chunk))
        bar.set_postfix(detections=len(out.results), errors=len(out.errors))
    bar.close()

    _write_json(os.path.join(output_dir, "results.json"), out.results)
    _write_json(
        os.path.join(output_dir, "images.json"),
        {
            "images": out.images,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(predictor.class_names)],
        },
    )
    defect_classes = [n for n in predictor.class_names if n != policy.part_class]
    write_report_csv(os.path.join(output_dir, "report.csv"), out.verdicts, defect_classes)
    if out.errors:
        _write_json(os.path.join(output_dir, "errors.json"), out.errors)
    return {"images": len(out.images), "detections": len(out.results),
            "errors": len(out.errors), "rejected": sum(v.rejected for _, v in out.verdicts),
            "output": output_dir}


class _Outputs:
    """What `run` collects image by image: COCO results, images, verdicts, errors, and the
    overlay PNGs it writes as it goes."""

    def __init__(self, predictor: Any, output_dir: str, overlays: bool,
                 gt_ids: dict[str, int] | None) -> None:
        self.predictor, self.gt_ids = predictor, gt_ids
        self.overlay_dir = os.path.join(output_dir, "overlays") if overlays else None
        os.makedirs(self.overlay_dir or output_dir, exist_ok=True)
        self.results: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.verdicts: list[tuple[str, Any]] = []
        self.errors: list[dict[str, str]] = []
        self.next_id = 1

    def read(self, chunk: list[tuple[str, str]]) -> tuple[list[Any], list[str]]:
        from casting.inference import InferenceError, load_image

        arrays, kept = [], []
        for path, name in chunk:
            try:
                arrays.append(load_image(path, self.predictor.max_pixels))
                kept.append(name)
            except (InferenceError, OSError) as exc:
                self.errors.append({"file_name": name, "error": str(exc)})
        return arrays, kept

    def add(self, name: str, arr: Any, raw: Any, verdict: Any) -> None:
        from casting.visualize import save_png

        if self.gt_ids is not None:
            image_id = self.gt_ids.get(name, self.gt_ids.get(os.path.basename(name)))
            if image_id is None:
                self.errors.append({"file_name": name, "error": "not in the --coco-gt images"})
                return
        else:
            image_id, self.next_id = self.next_id, self.next_id + 1
        self.images.append({"id": image_id, "file_name": name, "width": raw.width,
                            "height": raw.height})
        self.results.extend(_coco_results(self.predictor, raw, image_id))
        self.verdicts.append((name, verdict))
        if self.overlay_dir:
            stem = os.path.splitext(name)[0].replace(os.sep, "__")
            save_png(self.predictor.overlay(arr, raw, verdict=verdict),
                     os.path.join(self.overlay_dir, stem + ".png"))


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
    parser.add_argument("--policy", default=None,
                        help="acceptance policy: a JSON file or inline JSON (default: "
                             "$CASTING_POLICY, else the model folder's policy.json, else "
                             "any defect scoring >= 0.5 rejects)")
    parser.add_argument("--tile", default=None,
                        help="inference by tiles at native scale: off, on, auto (a side over "
                             "1.5x image_size), or key=value,... (tile_size, overlap, "
                             "full_pass, batch; see casting.tiling). Default $CASTING_TILE")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from casting.inference import InferenceError
    from casting.qc import PolicyError

    try:
        summary = run(
            args.model, args.input, args.output,
            min_score=args.min_score, classes=args.classes, coco_gt=args.coco_gt,
            overlays=not args.no_overlays, batch_size=args.batch_size,
            progress=not args.quiet, policy=args.policy, tile=args.tile,
        )
    except (FileNotFoundError, InferenceError, PolicyError) as exc:
        print(f"predict: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 1 if summary["images"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
