#!/usr/bin/env python
"""Can the model learn small defects at all? Train on a few synthetic castings, score per
class on those same images (memorising) and on other synthetic images, and say which stage
fails: the RPN (does a proposal cover each object?) or the box head (is the object's own box
classified right?).

    python bench/overfit.py [--images 4] [--size 256] [--steps 150] [--warmup 15]
        [--lr 0.01] [--augment 0] [--test-images 8] [--config '{"norm": "group"}']

Prints the objects' sizes, s/step, the last losses, COCO segm/bbox AP50 per class (scored
down to 0.05) and, per class, RPN recall at IoU 0.5 among the top 1000 / 100 proposals,
the box head's mean probability of the true class on the ground-truth boxes and its accuracy
there. The last line is `overfit key=value ...`. Not a test: a tool for ablations
(docs/quality.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4, help="training images (synthetic)")
    p.add_argument("--size", type=int, default=256, help="image size")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--augment", type=int, default=0, help="1: augment the training images")
    p.add_argument("--seed", type=int, default=7, help="synthetic seed of the training images")
    p.add_argument("--test-images", type=int, default=8, help="held-out images (0: none)")
    p.add_argument("--test-seed", type=int, default=99)
    p.add_argument("--config", default="{}", help="more Config fields as JSON")
    return p.parse_args(argv)


def object_sizes(ds):
    sizes = {}
    for rec in ds.records:
        for inst in rec.instances:
            ys, xs = np.nonzero(inst.mask)
            name = ds.class_names[inst.class_id - 1]
            sizes.setdefault(name, []).append((np.ptp(ys) + 1, np.ptp(xs) + 1, inst.area))
    return {k: np.median(np.array(v), 0) for k, v in sizes.items()}


def report(tag, model, ds, line):
    from casting.evaluation import evaluate_model

    metrics, _ = evaluate_model(model, ds.records, model.config.class_names, min_confidence=0.05)
    for kind in ("segm", "bbox"):
        per = metrics[kind]["per_class_AP50"]
        print(f"{tag} {kind} AP50 {metrics[kind]['AP50']} per class "
              + " ".join(f"{k}={v}" for k, v in per.items()))
        for k, v in per.items():
            line[f"{tag}_{kind}_{k}_AP50"] = v
    from stages import stage_table  # bench/stages.py

    for name, row in stage_table(model, ds, batch_size=len(ds.records)).items():
        print(f"{tag} {name}: rpn_recall@1000={row['rpn_recall_1000']:.2f} "
              f"@100={row['rpn_recall_100']:.2f} p(true|gt box)={row['p_true']:.2f} "
              f"accuracy={row['accuracy']:.2f}")


def main(argv=None):
    args = parse_args(argv)
    import keras

    from casting.config import Config
    from casting.data.pipeline import make_dataset
    from casting.data.synthetic import generate_records
    from casting.model import MaskRCNN
    from casting.training import (Plan, build_optimizer_for_all_layers, make_optimizer,
                                  seed_everything)

    seed_everything(0)
    train = generate_records(args.images, args.seed, args.size)
    cfg = Config(image_size=args.size, augment=bool(args.augment), epochs=1,
                 steps_per_epoch=args.steps, learning_rate=args.lr,
                 warmup_steps=args.warmup, **json.loads(args.config))
    for name, (h, w, area) in object_sizes(train).items():
        print(f"objects {name}: median {h:.0f} x {w:.0f} px, area {area:.0f}")
    model = MaskRCNN(cfg)
    plan = Plan.from_config(cfg)
    optimizer = make_optimizer(cfg, plan, decoupled_weight_decay=False)
    model.compile(optimizer=optimizer)
    build_optimizer_for_all_layers(model, optimizer, "all")
    data = make_dataset(train, cfg, training=True)
    model.calibrate_batchnorm(next(iter(data)))
    start = time.time()

    class Progress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if (batch + 1) % 25 == 0:
                print(f"step {batch + 1} {time.time() - start:.0f}s "
                      f"loss={float(logs['loss']):.3f}", flush=True)

    history = model.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0,
                        callbacks=[Progress()]).history
    seconds = time.time() - start
    print(f"trained {args.steps} steps in {seconds:.0f}s ({seconds / args.steps:.2f} s/step); "
          + " ".join(f"{k}={v[-1]:.3f}" for k, v in history.items()))
    line = {"steps": args.steps, "size": args.size, "images": args.images,
            "s_per_step": round(seconds / args.steps, 2), "config": args.config.replace(" ", "")}
    report("train", model, train, line)
    if args.test_images:
        report("test", model, generate_records(args.test_images, args.test_seed, args.size),
               line)
    print("overfit " + " ".join(f"{k}={v}" for k, v in line.items()), flush=True)


if __name__ == "__main__":
    main()
