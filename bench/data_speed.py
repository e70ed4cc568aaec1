"""Images per second that the input pipeline delivers (decode, resize, augment, pad, batch).

    python bench/data_speed.py                      # 64 synthetic 512x512 images
    python bench/data_speed.py --data ../shared/data/casting-real --batches 100

Prints images/s after a warm-up. The model trains at roughly 1-3 s per batch-2 step on a
2-core CPU (< 2 images/s), so the pipeline should deliver >= ~5 images/s.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="dataset folder/JSON (default: synthetic images)")
    p.add_argument("--count", type=int, default=64, help="synthetic images to generate")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--batches", type=int, default=60, help="batches to time")
    p.add_argument("--warmup", type=int, default=5, help="batches before timing")
    p.add_argument("--no-augment", action="store_true")
    args = p.parse_args(argv)

    import tensorflow as tf

    from casting.config import Config
    from casting.data import load_dataset
    from casting.data.pipeline import make_dataset
    from casting.data.synthetic import generate_records

    print("command:", " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv))
    print(f"cpu cores: {os.cpu_count()}, tf {tf.__version__}")
    t0 = time.perf_counter()
    if args.data:
        ds = load_dataset(args.data)
        what = args.data
    else:
        ds = generate_records(args.count, seed=0, size=args.size,
                              out_dir=tempfile.mkdtemp(prefix="bench-synth-"))
        what = f"{args.count} synthetic images"
    print(f"loaded {what}: {len(ds.records)} images in {time.perf_counter() - t0:.1f} s")
    config = Config(class_names=ds.class_names, image_size=args.size,
                    batch_size=args.batch_size, augment=not args.no_augment)
    data = iter(make_dataset(ds, config, training=True))
    for _ in range(args.warmup):
        next(data)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        batch = next(data)
    batch["image"].numpy()
    elapsed = time.perf_counter() - t0
    n = args.batches * args.batch_size
    print(f"{n / elapsed:.1f} images/s at {args.size}x{args.size} "
          f"(augment={'off' if args.no_augment else 'on'}, batch {args.batch_size}, "
          f"{n} images in {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
