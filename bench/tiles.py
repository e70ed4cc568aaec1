#!/usr/bin/env python
"""Large frames: whole-frame resize against tiles at native scale, per class.

    python bench/tiles.py --model MODEL_DIR (--source DIR | --synthetic N) --grid 2
        [--tile on] [--work DIR] [--out F.json]

A large frame is made of grid x grid images of the source folder (or of N synthetic
castings at the model's `image_size`), pasted side by side at their own pixel size with
their masks: a 2x2 frame of 512-px photos is 1024 px, each defect at the pixels it has in
its photo. The same model then scores three ways, with train.py's final COCO evaluation
(detections down to 0.05):

- `native`: the source images one by one (what the model does at the scale it trained on);
- `resize`: each frame resized to `image_size` (what serving did before tiles: a 2x2 frame
  shrinks 2x, its defects 4x in area);
- `tiles`: each frame by tiles (casting.tiling, `--tile`, default "on": tiles of
  `image_size`, 64 px overlap, a full-frame pass for large objects).

Prints per class segm AP50 and AP and bbox AP50, the defect mean, detections and seconds
per frame (per image for `native`), then one `tiles way=... key=value ...` line per way.
The frames are PNG files under `--work` (default: a new temporary folder). A tool for
docs/serving.md, not a test (tests/test_quality_bench.py runs it on a tiny model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eval_sizes import figures, score  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model folder (config.json + weights)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", help="the images frames are made of (Supervisely or COCO)")
    src.add_argument("--synthetic", type=int, help="make N synthetic castings instead")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic castings")
    p.add_argument("--grid", type=int, default=2, help="images per frame side (default 2)")
    p.add_argument("--tile", default="on", help="the casting.tiling option (default on)")
    p.add_argument("--work", help="where the frames are written")
    p.add_argument("--out", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def make_frames(ds, grid: int, out_dir: str):
    """grid x grid consecutive records of `ds` per frame (the remainder left out), each in a
    cell as large as the largest image, at its own pixel size -> DatasetRecords."""
    from PIL import Image

    from casting.data.records import DatasetRecords, Instance, Record
    from casting.evaluation import load_image

    per = grid * grid
    if len(ds.records) < per:
        raise SystemExit(f"tiles: {grid}x{grid} frames need {per} images, the source has "
                         f"{len(ds.records)}")
    cell_h = max(r.height for r in ds.records)
    cell_w = max(r.width for r in ds.records)
    os.makedirs(out_dir, exist_ok=True)
    frames = []
    for f in range(len(ds.records) // per):
        frame = np.zeros((grid * cell_h, grid * cell_w, 3), np.uint8)
        instances = []
        for k, rec in enumerate(ds.records[f * per:(f + 1) * per]):
            y, x = (k // grid) * cell_h, (k % grid) * cell_w
            frame[y:y + rec.height, x:x + rec.width] = load_image(rec.image_path,
                                                                   rec.orientation)
            for inst in rec.instances:
                mask = np.zeros(frame.shape[:2], bool)
                mask[y:y + rec.height, x:x + rec.width] = inst.mask
                instances.append(Instance(inst.class_id, mask, inst.iscrowd))
        path = os.path.join(out_dir, f"frame_{f:04d}.png")
        Image.fromarray(frame).save(path)
        frames.append(Record(f"frame_{f:04d}", path, frame.shape[0], frame.shape[1],
                             instances=instances))
    return DatasetRecords(ds.class_names, frames)


def main(argv=None) -> int:
    args = parse_args(argv)
    from casting import tiling
    from casting.config import Config
    from casting.data import load_dataset, read_dataset
    from casting.data.synthetic import write_synthetic
    from casting.model.io import CONFIG_FILE, WEIGHTS_FILE
    from casting.model.maskrcnn import MaskRCNN

    tiling.parse_tile(args.tile)  # a bad option stops before any work
    config = Config.load(os.path.join(args.model, CONFIG_FILE))
    work = args.work or tempfile.mkdtemp(prefix="casting-tiles-")
    source = args.source
    if source is None:
        source = os.path.join(work, "synthetic")
        write_synthetic(source, args.synthetic, args.seed, size=int(config.image_size))
    # classes the model does not know are left out of the frames' ground truth
    drop = {name: None for name in read_dataset(source, check_images=False)[0].class_names
            if name not in config.class_names}
    ds = load_dataset(source, class_map=drop, class_names=config.class_names)
    ds.records = [r.materialize() for r in ds.records]
    frames = make_frames(ds, args.grid, os.path.join(work, "frames"))
    used = ds.subset(range(len(frames.records) * args.grid ** 2))
    print(f"[tiles] {len(frames.records)} frames of {args.grid}x{args.grid} images, "
          f"{frames.records[0].height}x{frames.records[0].width} px, model image_size "
          f"{config.image_size}, tile option {args.tile!r}", flush=True)
    model = MaskRCNN(config)
    model.load_weights(os.path.join(args.model, WEIGHTS_FILE))
    results = {"native": score(model, used), "resize": score(model, frames),
               "tiles": score(model, frames, tile=args.tile)}
    print(f"{'figure':<22}" + "".join(f"{w:>10}" for w in results))
    for key, label in (("segm_AP50_per_class", "segm AP50"), ("segm_AP_per_class", "segm AP"),
                       ("bbox_AP50_per_class", "bbox AP50")):
        for c in config.class_names:
            cells = [results[w][key].get(c) for w in results]
            print(f"{label + ' ' + c:<22}" + "".join(
                f"{'-' if v is None else f'{v:.3f}':>10}" for v in cells))
    for key in ("defect_segm_AP50", "dets_per_img", "s_per_image"):
        print(f"{key:<22}" + "".join(
            f"{'-' if results[w][key] is None else f'{results[w][key]:.3f}':>10}"
            for w in results))
    for way, r in results.items():
        print(f"tiles way={way} {figures(r, bbox_per_class=True)}", flush=True)
    if args.out:
        from casting.files import write_atomic

        write_atomic(args.out, json.dumps({"settings": vars(args), "frames": len(frames.records),
                                           "frame_size": [frames.records[0].height,
                                                          frames.records[0].width],
                                           "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
