"""python -m casting.data {synth,convert,check,split} ...

  synth   --out DIR --count N --seed S [--format supervisely|coco|both] [--size 512]
  convert SRC DST          Supervisely (or COCO) -> COCO folder (annotations.json + images/)
  check   DIR              counts per class, sizes, and every problem (exit 1 if any)
  split   SRC --out DST [--test-fraction 0.2] [--seed 0] [--copy] [--force]
                           deterministic train/test split by image, stratified by the
                           Supervisely image tags: DST/train, DST/test, DST/split.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import time


def _class_map(items):
    """["holes=blowhole", "disk="] -> {"holes": "blowhole", "disk": None}."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--class-map expects OLD=NEW (or OLD= to drop), got {item!r}")
        old, new = item.split("=", 1)
        out[old] = new or None
    return out


def _split(args) -> None:
    import os

    from casting.data.split_write import split_dataset, summary_line

    tags = [t.strip() for t in args.stratify_tags.split(",") if t.strip()] \
        if args.stratify_tags else None
    summary = split_dataset(args.src, args.out, args.test_fraction, args.seed, copy=args.copy,
                            force=args.force, stratify=not args.no_stratify,
                            stratify_tags=tags)
    used = summary["stratified_by_tags"]
    how = (f"stratified by the tags {', '.join(used)}" if used
           else "not stratified" + (" (--no-stratify)" if args.no_stratify
                                    else " (the images carry no tags)"))
    print(f"split {summary['source']} (seed {summary['seed']}, test fraction "
          f"{summary['test_fraction']:g}, {how}; {summary['files']}s) -> "
          f"{os.path.abspath(args.out)}")
    for side in ("train", "test"):
        print(summary_line(side, summary[side]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m casting.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synth", help="generate synthetic castings")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--format", choices=("supervisely", "coco", "both"), default="supervisely")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--good-fraction", type=float, default=0.0,
                   help="share of parts drawn without defects (tagged good)")
    p = sub.add_parser("convert", help="convert a dataset to COCO")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--class-map", action="append", metavar="OLD=NEW")
    p.add_argument("--skip-bad", action="store_true", help="drop bad items instead of failing")
    p = sub.add_parser("check", help="report counts, sizes and problems")
    p.add_argument("path")
    p.add_argument("--class-map", action="append", metavar="OLD=NEW")
    p = sub.add_parser("split", help="deterministic train/test split into two Supervisely "
                       "folders")
    p.add_argument("src", help="Supervisely project (or COCO folder) to split")
    p.add_argument("--out", required=True, help="writes OUT/train, OUT/test, OUT/split.json")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--copy", action="store_true",
                   help="copy the image and annotation files (default: symbolic links)")
    p.add_argument("--force", action="store_true",
                   help="replace OUT/train and OUT/test even when they hold other content")
    p.add_argument("--no-stratify", action="store_true",
                   help="ignore the image tags (a plain random split)")
    p.add_argument("--stratify-tags", metavar="TAG,TAG",
                   help="stratify by these image tags only (default: every image tag)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from casting.data import DatasetError, load_dataset, read_dataset

    try:
        if args.command == "synth":
            from casting.data.synthetic import write_synthetic

            t0 = time.perf_counter()
            paths = write_synthetic(args.out, args.count, args.seed, args.format, args.size,
                                    progress=True, good_fraction=args.good_fraction)
            print(f"wrote {args.count} images to {', '.join(paths)} "
                  f"in {time.perf_counter() - t0:.1f} s")
        elif args.command == "convert":
            from casting.data.coco import write_coco

            ds = load_dataset(args.src, _class_map(args.class_map),
                              on_error="skip" if args.skip_bad else "raise")
            path = write_coco(ds, args.dst, progress=True)
            print(f"wrote {len(ds.records)} images to {path}")
        elif args.command == "split":
            _split(args)
        else:
            t0 = time.perf_counter()
            _, report = read_dataset(args.path, _class_map(args.class_map))
            print(report.text())
            print(f"(checked in {time.perf_counter() - t0:.1f} s)")
            return 0 if report.ok else 1
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
