"""Model speed at 512x512 on this CPU, beside the peers in ../shared/bench, in one run.

Measures our Mask R-CNN (ResNet50-FPN): inference latency at batch 1 (the graph alone, and
`detect()` end to end with masks pasted at full resolution), the training step at batch 2
(3 instances per image, all layers), peak memory and the detection count. Then runs the peer
scripts (torchvision's and TF Model Garden's Mask R-CNN, set up by
../shared/bench/setup_torch.sh and setup_tfm.sh) and prints ours/theirs ratios.

Like with like: 1000 proposals at test time, a 2-fc box head, up to 100 detections into the
mask head (min confidence 0 so that a randomly initialised model fills them), 28x28 masks.

    python bench/model_speed.py                 # ours + peers, 10 timed steps each
    python bench/model_speed.py --skip-peers    # ours only
    python bench/model_speed.py --skip-peers --precision float32,mixed_bfloat16,mixed_float16
                                                # ours in each precision (casting.precision)
Each measurement runs in its own process, so peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED_BENCH = os.path.join(ROOT, "..", "shared", "bench")


def _stats(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_busy_s():
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    return (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


class _Contention:
    """Cores used by other processes while timing (the box is shared)."""

    def __enter__(self):
        self.t0, self.b0, self.c0 = time.perf_counter(), _cpu_busy_s(), sum(os.times()[:2])
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        own = sum(os.times()[:2]) - self.c0
        self.other = max(0.0, _cpu_busy_s() - self.b0 - own) / wall
        return False


def measure_ours(mode: str, steps: int, warmup: int, size: int, rpn_channels: int,
                 precision: str = "float32") -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, ROOT)
    from casting.config import Config
    from casting.model import MaskRCNN

    config = Config(image_size=size, rpn_conv_channels=rpn_channels, batch_size=2,
                    detection_min_confidence=0.0, precision=precision)
    t = time.perf_counter()
    model = MaskRCNN(config)
    out = {"build_s": time.perf_counter() - t,
           "params": int(sum(np.prod(v.shape) for v in model.weights))}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, size, size, 3)).astype(np.float32)
    n = config.max_gt_instances
    masks = np.zeros((2, n, size, size), np.uint8)
    boxes = np.zeros((2, n, 4), np.float32)
    classes = np.zeros((2, n), np.int32)
    for b in range(2):
        for k in range(3):  # three instances per image, as the peers use
            y, x = rng.integers(0, size - 120, 2)
            h, w = rng.integers(20, 110, 2)
            masks[b, k, y:y + h, x:x + w] = 1
            boxes[b, k] = [y, x, y + h, x + w]
            classes[b, k] = 1 + k % len(config.class_names)
    batch = {"image": images, "gt_boxes": boxes, "gt_class_ids": classes, "gt_masks": masks,
             "num_instances": np.array([3, 3], np.int32),
             "image_info": np.array([[size, size, 1, 0]] * 2, np.float32)}
    # random weights with frozen BatchNorm explode unless the statistics are calibrated
    model.calibrate_batchnorm(batch)
    if mode == "infer":
        image = images[0].astype(np.uint8)
        fn = model.inference_function()
        one = tf.constant(image[None].astype(np.float32))
        info = tf.constant([[size, size, 1.0, 0.0]], tf.float32)
        conf = tf.constant(0.0)
        for _ in range(warmup):
            model.detect([image], min_confidence=0.0)
        graph_times, detect_times = [], []
        with _Contention() as probe:
            for _ in range(steps):
                t = time.perf_counter()
                res = fn(one, info, conf)
                _ = res["masks"].numpy()
                graph_times.append(time.perf_counter() - t)
            for _ in range(steps):
                t = time.perf_counter()
                det = model.detect([image], min_confidence=0.0)[0]
                detect_times.append(time.perf_counter() - t)
        out.update(graph=_stats(graph_times), detect=_stats(detect_times),
                   detections=int(len(det["scores"])), contention=probe.other)
    else:
        model.compile()
        model.make_train_function()
        step = model.train_function
        iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
        for _ in range(warmup):
            logs = step(iterator)
        times = []
        with _Contention() as probe:
            for _ in range(steps):
                t = time.perf_counter()
                logs = step(iterator)
                float(logs["loss"])
                times.append(time.perf_counter() - t)
        out.update(train=_stats(times), loss=float(logs["loss"]), contention=probe.other)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def run_json(cmd: list[str], tag: str, timeout: int) -> dict | None:
    """Run a peer script; return the dict from its `<tag> json=...` line."""
    print("$ " + " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout} s", flush=True)
        return None
    for line in proc.stdout.splitlines():
        if line.startswith(f"{tag} json="):
            return json.loads(line.split("json=", 1)[1])
    print(f"  failed (rc={proc.returncode}): {proc.stderr[-1500:]}", flush=True)
    return None


def ours_subprocess(mode, args, precision="float32") -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--_ours", mode, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--size", str(args.size),
           "--rpn-channels", str(args.rpn_channels), "--precision", precision]
    return run_json(cmd, "ours", args.timeout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="timed iterations (10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first (2)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--rpn-channels", type=int, default=256,
                   help="RPN conv width (256 like the peers; matterport used 512)")
    p.add_argument("--skip-peers", action="store_true")
    p.add_argument("--precision", default="float32",
                   help="ours in each of these precisions, comma-separated: float32, "
                   "mixed_float16, mixed_bfloat16 (float32); the first is compared with the peers")
    p.add_argument("--torch-python", default="/tmp/venv-torch/bin/python")
    p.add_argument("--tfm-python", default="/tmp/venv-tfm/bin/python")
    p.add_argument("--timeout", type=int, default=1800, help="per measurement, seconds")
    p.add_argument("--json-out", help="also write all results to this JSON file")
    p.add_argument("--_ours", choices=["infer", "train"], help=argparse.SUPPRESS)
    args = p.parse_args()

    precisions = [x.strip() for x in args.precision.split(",") if x.strip()]
    if args._ours:
        print("ours json=" + json.dumps(measure_ours(args._ours, args.steps, args.warmup,
                                                     args.size, args.rpn_channels,
                                                     precisions[0])), flush=True)
        return

    results = {"ours_infer": ours_subprocess("infer", args, precisions[0]),
               "ours_train": ours_subprocess("train", args, precisions[0]),
               "precision": precisions[0]}
    for other in precisions[1:]:
        results[f"ours_infer_{other}"] = ours_subprocess("infer", args, other)
        results[f"ours_train_{other}"] = ours_subprocess("train", args, other)
    if not args.skip_peers:
        common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--size", str(args.size)]
        tv = os.path.join(SHARED_BENCH, "torchvision_maskrcnn.py")
        tfm = os.path.join(SHARED_BENCH, "tfm_maskrcnn.py")
        if os.path.exists(args.torch_python):
            results["torchvision"] = run_json([args.torch_python, tv] + common, "torchvision",
                                              args.timeout)
        else:
            print(f"skip torchvision: {args.torch_python} missing (run ../shared/bench/setup_torch.sh)")
        if os.path.exists(args.tfm_python):
            results["tfm_infer"] = run_json([args.tfm_python, tfm] + common, "tfm", args.timeout)
            results["tfm_train"] = run_json([args.tfm_python, tfm, "--mode", "train"] + common,
                                            "tfm", args.timeout)
        else:
            print(f"skip tfm: {args.tfm_python} missing (run ../shared/bench/setup_tfm.sh)")
    report(results)
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(results, fh, indent=2)


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def report(results):
    oi, ot = results.get("ours_infer") or {}, results.get("ours_train") or {}
    first = results.get("precision", "float32")
    rows = [(f"ours (Keras 3 / TF 2.21, {first})", _get(oi, "detect", "median"),
             _get(ot, "train", "median"), oi.get("peak_rss_mb"), ot.get("peak_rss_mb"),
             oi.get("detections"))]
    others = []
    for key in results:
        if key.startswith("ours_infer_"):
            other = key[len("ours_infer_"):]
            pi, pt = results[key] or {}, results.get(f"ours_train_{other}") or {}
            others.append((f"ours ({other})", _get(pi, "detect", "median"),
                           _get(pt, "train", "median"), pi.get("peak_rss_mb"),
                           pt.get("peak_rss_mb"), pi.get("detections")))
    tv = results.get("torchvision") or {}
    if tv:
        rows.append(("torchvision 0.28", _get(tv, "infer", "median"), _get(tv, "train", "median"),
                     _get(tv, "infer", "peak_rss_mb"), _get(tv, "train", "peak_rss_mb"),
                     _get(tv, "infer", "detections")))
    ti, tt = results.get("tfm_infer") or {}, results.get("tfm_train") or {}
    if ti or tt:
        rows.append(("TF Model Garden 2.20", _get(ti, "infer", "median"), _get(tt, "train", "median"),
                     _get(ti, "infer", "peak_rss_mb"), _get(tt, "train", "peak_rss_mb"),
                     _get(ti, "infer", "detections")))

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    print()
    print("| model | infer s/img (b=1) | train s/step (b=2) | infer peak MB | train peak MB | detections |")
    print("|---|---|---|---|---|---|")
    for name, inf, tr, mi, mt, nd in rows[:1] + others + rows[1:]:
        print(f"| {name} | {f(inf)} | {f(tr)} | {f(mi, '{:.0f}')} | {f(mt, '{:.0f}')} | {f(nd, '{}')} |")
    if oi:
        print(f"\nours, graph only (no mask pasting): {f(_get(oi, 'graph', 'median'))} s/img; "
              f"contention (other processes' cores while timing): infer {f(oi.get('contention'), '{:.2f}')}, "
              f"train {f(ot.get('contention'), '{:.2f}')}")
    base = rows[0]
    for name, inf, tr, *_ in others:
        ri = inf / base[1] if base[1] and inf else None
        rt = tr / base[2] if base[2] and tr else None
        print(f"{name} / ours ({first}): inference {f(ri, '{:.2f}')}, training {f(rt, '{:.2f}')}")
    for name, inf, tr, *_ in rows[1:]:
        ri = base[1] / inf if base[1] and inf else None
        rt = base[2] / tr if base[2] and tr else None
        print(f"ratio ours/{name}: inference {f(ri, '{:.2f}')}, training {f(rt, '{:.2f}')}")


if __name__ == "__main__":
    main()
