#!/usr/bin/env python
"""Time one training step of our model for a config, on two synthetic castings.

    python bench/train_step.py [--size 256] [--steps 3] [--config '{"norm": "group"}']

For ablations of what a config change costs per step (docs/quality.md); bench/model_speed.py
compares with the peers. Prints `train_step size=... config=... s_per_step=...`: the mean of
`--steps` traced steps after one untimed step (tracing). Compare figures of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--config", default="{}", help="Config fields as JSON")
    args = p.parse_args(argv)
    import tensorflow as tf

    from casting.config import Config
    from casting.data.pipeline import make_dataset
    from casting.data.synthetic import generate_records
    from casting.model import MaskRCNN

    cfg = Config(image_size=args.size, augment=False, **json.loads(args.config))
    model = MaskRCNN(cfg)
    model.compile()
    batch = next(iter(make_dataset(generate_records(2, 3, args.size), cfg, training=True)))
    model.calibrate_batchnorm(batch)
    step = tf.function(model.train_step)
    step(batch)
    start = time.time()
    for _ in range(args.steps):
        out = step(batch)
    float(out["loss"])
    seconds = (time.time() - start) / args.steps
    print(f"train_step size={args.size} config={args.config.replace(' ', '')} "
          f"s_per_step={seconds:.2f}", flush=True)


if __name__ == "__main__":
    main()
