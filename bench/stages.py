#!/usr/bin/env python
"""Where does a trained model lose each class? Per-class figures for each stage, on a test
folder, for one model folder:

    python bench/stages.py --model MODEL_DIR --test DIR [--batch-size 2] [--out F.json]

For every ground-truth object, at the model's `image_size`:
- anchors: the best IoU of any anchor with the object's box, and how many anchors the
  RPN's targets would mark positive for it (IoU >= `rpn_positive_iou`, or its best anchor);
- RPN: whether a proposal (after NMS, the inference count) overlaps the box at IoU >= 0.5
  among the top 1000 / top 100, and at IoU >= 0.3 among all;
- box head, on the object's own ground-truth box: the probability of its true class and of
  background, and whether the true class wins (accuracy).
Prints one line per class, then `stages class=... key=value ...` lines. A low RPN recall
says the objects are never proposed; a low p(true) on exact boxes says the head has not
learned the class. A tool for ablations (docs/quality.md), not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COLUMNS = ("anchor_best_iou", "positive_anchors", "rpn_recall_1000", "rpn_recall_100",
           "rpn_recall_iou30", "p_true", "p_background", "accuracy")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model folder (config.json + weights)")
    p.add_argument("--test", required=True, help="test folder (Supervisely or COCO)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--out", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def object_rows(model, batch, anchors) -> list[tuple[int, tuple]]:
    """(class id, one value per COLUMNS) for each ground-truth object of a batch."""
    import tensorflow as tf

    from casting.model import ops
    from casting.model import rpn as rpn_lib
    from casting.model.roi_heads import pool

    cfg = model.config
    pyramid = model.pyramid(batch["image"])
    logits, deltas = model.rpn(pyramid)
    proposals = rpn_lib.generate_proposals(logits, deltas, anchors, cfg,
                                           cfg.post_nms_rois_inference)
    gt = batch["gt_boxes"]
    proposal_iou = ops.pairwise_iou(proposals, gt).numpy()  # [B, R, N], best first
    anchor_iou = ops.pairwise_iou(anchors[None], gt).numpy()  # [B, A, N]
    class_logits, _ = model.box_head(pool(pyramid, gt, cfg.pool_size))
    probs = tf.nn.softmax(class_logits).numpy()
    classes = batch["gt_class_ids"].numpy()
    rows = []
    for b in range(classes.shape[0]):
        for j in np.nonzero(classes[b])[0]:
            c = int(classes[b, j])
            a = anchor_iou[b, :, j]
            positives = int(((a >= cfg.rpn_positive_iou) | (a >= a.max())).sum())
            p = proposal_iou[b, :, j]
            rows.append((c, (float(a.max()), positives, p[:1000].max() >= 0.5,
                             p[:100].max() >= 0.5, p.max() >= 0.3, probs[b, j, c],
                             probs[b, j, 0], probs[b, j].argmax() == c)))
    return rows


def stage_table(model, ds, batch_size: int = 2) -> dict[str, dict[str, float]]:
    """Per class name: objects, the median anchor figures and the mean of the others."""
    import tensorflow as tf

    from casting.data.pipeline import make_dataset

    anchors = tf.constant(model.anchors)
    by_class: dict[int, list] = {}
    for batch in make_dataset(ds, model.config, training=False, batch_size=batch_size):
        for c, values in object_rows(model, batch, anchors):
            by_class.setdefault(c, []).append(values)
    table = {}
    for c in sorted(by_class):
        values = np.array(by_class[c], float)
        row = {"objects": len(values)}
        for k, name in enumerate(COLUMNS):
            agg = np.median if name in ("anchor_best_iou", "positive_anchors") else np.mean
            row[name] = round(float(agg(values[:, k])), 3)
        table[model.config.class_names[c - 1]] = row
    return table


def main(argv=None) -> int:
    args = parse_args(argv)
    from casting.data import load_dataset
    from casting.model import load_model_dir

    model = load_model_dir(args.model)
    ds = load_dataset(args.test, class_names=model.config.class_names)
    table = stage_table(model, ds, args.batch_size)
    print(f"{'class':<10} objects  anchor IoU (median)  positive anchors (median)  "
          "RPN recall @1000 @100 (IoU 0.3)  p(true) p(bg) accuracy")
    for name, row in table.items():
        print(f"{name:<10} {row['objects']:>7}  {row['anchor_best_iou']:>19.2f}  "
              f"{row['positive_anchors']:>25.0f}  {row['rpn_recall_1000']:>16.2f} "
              f"{row['rpn_recall_100']:>4.2f} ({row['rpn_recall_iou30']:.2f})  "
              f"{row['p_true']:>7.2f} {row['p_background']:>5.2f} {row['accuracy']:>8.2f}")
    for name, row in table.items():
        print(f"stages class={name} " + " ".join(f"{k}={v}" for k, v in row.items()))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"model": args.model, "test": args.test, "classes": table}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
