#!/usr/bin/env python
"""Score one trained model folder on a test folder at several inference sizes.

    python bench/eval_sizes.py --model MODEL_DIR --test DIR --sizes 512,768,1024 [--out F.json]

The network is fully convolutional: the weights of a model trained at one `image_size`
(or on crops of it) run at any multiple of 64. For each size the model is rebuilt with
`config.image_size` set to it, the same weights are loaded, and train.py's final COCO
evaluation runs on every test image (detections down to 0.05). Prints per class segm AP50
and AP, the defect mean segm AP50 (the classes other than `disk` present in the test set),
bbox AP50 and the seconds per image, then one `eval_sizes size=... key=value ...` line per
size. A tool for ablations (docs/quality.md), not a test. Setting `image_size` in a model
folder's config.json changes the size the endpoint and `casting.predict` use the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model folder (config.json + weights)")
    p.add_argument("--test", required=True, help="test folder (Supervisely or COCO)")
    p.add_argument("--sizes", required=True, help="comma-separated inference sizes")
    p.add_argument("--out", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def score(model, ds, tile=None) -> dict:
    """train.py's final COCO evaluation of `model` on every image of `ds` (by tiles with a
    casting.tiling option), as the figures these benchmarks print."""
    from casting.evaluation import evaluate_model

    start = time.perf_counter()
    metrics, _ = evaluate_model(model, ds.records, ds.class_names, tile=tile)
    seconds = (time.perf_counter() - start) / len(ds.records)
    segm, bbox = metrics["segm"], metrics["bbox"]
    present = [c for c, n in metrics["num_gt_instances"].items() if n > 0]
    defects = [segm["per_class_AP50"][c] for c in present if c != "disk"]
    defects = [v for v in defects if v is not None]
    return {
        "segm_AP": segm["AP"], "segm_AP50": segm["AP50"], "bbox_AP50": bbox["AP50"],
        "defect_segm_AP50": sum(defects) / len(defects) if defects else None,
        "segm_AP50_per_class": segm["per_class_AP50"], "segm_AP_per_class": segm["per_class"],
        "bbox_AP50_per_class": bbox["per_class_AP50"],
        "dets_per_img": metrics["num_detections"] / len(ds.records), "s_per_image": seconds,
    }


def figures(r: dict, bbox_per_class: bool = False) -> str:
    """`key=value` text of a `score` result ("nan" where COCO had nothing to score): segm
    AP / AP50 / defect mean / per class, then bbox AP50 (overall, or per class)."""
    fmt = lambda v: "nan" if v is None else f"{v:.3f}"  # noqa: E731
    per_class = " ".join(f"{c}_AP50={fmt(v)}" for c, v in r["segm_AP50_per_class"].items())
    ap = " ".join(f"{c}_AP={fmt(v)}" for c, v in r["segm_AP_per_class"].items())
    box = (" ".join(f"{c}_bbox_AP50={fmt(v)}" for c, v in r["bbox_AP50_per_class"].items())
           if bbox_per_class else f"bbox_AP50={fmt(r['bbox_AP50'])}")
    return (f"segm_AP={fmt(r['segm_AP'])} segm_AP50={fmt(r['segm_AP50'])} "
            f"defect_segm_AP50={fmt(r['defect_segm_AP50'])} {per_class} {ap} {box} "
            f"dets_per_img={r['dets_per_img']:.1f} s_per_image={r['s_per_image']:.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    from casting.config import Config
    from casting.data import load_dataset
    from casting.model.io import CONFIG_FILE, WEIGHTS_FILE
    from casting.model.maskrcnn import MaskRCNN

    config = Config.load(os.path.join(args.model, CONFIG_FILE))
    ds = load_dataset(args.test, class_names=config.class_names)
    results = {}
    for size in (int(s) for s in args.sizes.split(",")):
        model = MaskRCNN(config.replace(image_size=size))
        model.load_weights(os.path.join(args.model, WEIGHTS_FILE))
        results[size] = r = score(model, ds)
        print(f"eval_sizes size={size} {figures(r)}", flush=True)
    if args.out:
        from casting.files import write_atomic

        write_atomic(args.out, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
