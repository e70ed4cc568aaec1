#!/usr/bin/env python3
"""Bounded loopback load against the hosting endpoint: throughput, p50/p99 latency, errors.

    # start serve.py on a model folder, load it at concurrency 1, 4, 16, stop it:
    python bench/serve_load.py --model-dir output/model
    # no model at hand: build a random-init one (image_size 512 by default) in a temp folder
    python bench/serve_load.py --random-model 512
    # an endpoint that is already running (loopback only)
    python bench/serve_load.py --url http://127.0.0.1:8080

Each concurrency level sends at most --requests requests (default: max(8, 2 x concurrency))
and stops issuing new ones after --seconds; every request has a timeout. Requests are
POST /invocations with a JPEG (--size x --size, a synthetic casting photo) and
Accept: application/json. An error is any non-200 answer or a failed request. A side thread
pings /ping every 0.25 s during each level; the table gives the slowest ping.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def synthetic_jpeg(size: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size), 50.0)
    img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size * 0.42) ** 2] = 165.0
    img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size * 0.12) ** 2] = 80.0
    for _ in range(6):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = rng.integers(2, max(3, size // 60))
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 35.0
    img += rng.normal(0, 6, img.shape)
    rgb = np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_random_model(image_size: int, path: str) -> None:
    from casting.config import Config
    from casting.model import MaskRCNN, save_model_dir

    model = MaskRCNN(Config(image_size=image_size))
    save_model_dir(model, path, saved_model=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if requests.get(url + "/ping", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {limit:.0f} s")


def run_level(url: str, payload: bytes, concurrency: int, max_requests: int, seconds: float,
              timeout: float, params: dict) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    issued = 0
    deadline = time.monotonic() + seconds

    def worker() -> None:
        nonlocal issued
        session = requests.Session()
        while True:
            with lock:
                if issued >= max_requests or time.monotonic() >= deadline:
                    return
                issued += 1
            t0 = time.perf_counter()
            try:
                r = session.post(url + "/invocations", data=payload, params=params,
                                 headers={"Content-Type": "image/jpeg",
                                          "Accept": "application/json"}, timeout=timeout)
                ok = r.status_code == 200
                detail = "" if ok else f"HTTP {r.status_code}: {r.text[:120]}"
            except requests.RequestException as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - t0
            with lock:
                (latencies if ok else errors).append(elapsed if ok else detail)

    # /ping while the load runs (SageMaker health checks must answer within 2 s)
    pings: list[float] = []
    stop = threading.Event()

    def pinger() -> None:
        while not stop.is_set() and len(pings) < 1000:
            t0 = time.perf_counter()
            try:
                ok = requests.get(url + "/ping", timeout=timeout).status_code == 200
            except requests.RequestException:
                ok = False
            pings.append(time.perf_counter() - t0 if ok else float("inf"))
            stop.wait(0.25)

    ping_thread = threading.Thread(target=pinger, daemon=True)
    started = time.perf_counter()
    ping_thread.start()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - started
    stop.set()
    ping_thread.join(timeout + 5)
    lat = np.array(latencies) * 1000.0
    return {
        "concurrency": concurrency,
        "requests": len(latencies) + len(errors),
        "ok": len(latencies),
        "errors": len(errors),
        "wall_s": wall,
        "throughput_rps": len(latencies) / wall if wall > 0 else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "max_ms": float(lat.max()) if lat.size else float("nan"),
        "ping_max_ms": max(pings) * 1000.0 if pings else float("nan"),
        "first_error": errors[0] if errors else "",
    }


def format_table(rows: list[dict]) -> str:
    head = ("concurrency", "requests", "errors", "wall s", "req/s", "p50 ms", "p99 ms", "max ms",
            "/ping max ms")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {r['errors']} | {r['wall_s']:.1f} | "
            f"{r['throughput_rps']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['max_ms']:.0f} | {r['ping_max_ms']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="a running endpoint on loopback, e.g. http://127.0.0.1:8080")
    src.add_argument("--model-dir", help="start serve.py on this model folder")
    src.add_argument("--random-model", type=int, metavar="IMAGE_SIZE",
                     help="build a random-init model of this image size and serve it")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated levels (1,4,16)")
    p.add_argument("--requests", type=int, default=None,
                   help="requests per level (default max(8, 2 x concurrency))")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="stop issuing requests at a level after this long (60)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (120)")
    p.add_argument("--size", type=int, default=512, help="test image side in pixels (512)")
    p.add_argument("--min-score", default=None, help="min_score query parameter")
    p.add_argument("--workers", type=int, default=1, help="server workers when starting one (1)")
    p.add_argument("--json", help="also write the results as JSON here")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not levels or min(levels) < 1 or max(levels) > 64:
        p.error("concurrency levels must be in 1..64")
    if args.url:
        host = urlparse(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            p.error("--url must be a loopback address")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    tmp = None
    proc = None
    url = args.url.rstrip("/") if args.url else None
    model_dir = args.model_dir
    try:
        if args.random_model:
            tmp = tempfile.TemporaryDirectory(prefix="serve-load-")
            model_dir = os.path.join(tmp.name, "model")
            t0 = time.monotonic()
            build_random_model(args.random_model, model_dir)
            print(f"built a random-init {args.random_model}px model in "
                  f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
        if url is None:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = dict(os.environ, SAGEMAKER_MODEL_SERVER_WORKERS=str(args.workers))
            log = open(os.path.join(tempfile.gettempdir(), f"serve-load-{port}.log"), "wb")
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "serve.py"), "--model-dir", model_dir,
                 "--host", "127.0.0.1", "--port", str(port)],
                cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
            )
            t0 = time.monotonic()
            wait_ready(url, proc, 300)
            print(f"server ready in {time.monotonic() - t0:.0f} s (log {log.name})", file=sys.stderr)
        else:
            wait_ready(url, None, 30)

        payload = synthetic_jpeg(args.size)
        params = {"min_score": args.min_score} if args.min_score is not None else {}
        # one warm-up request, not counted
        requests.post(url + "/invocations", data=payload, params=params,
                      headers={"Content-Type": "image/jpeg"}, timeout=args.timeout)
        rows = []
        for c in levels:
            n = args.requests or max(8, 2 * c)
            rows.append(run_level(url, payload, c, n, args.seconds, args.timeout, params))
            print(f"concurrency {c}: {rows[-1]['ok']} ok, {rows[-1]['errors']} errors",
                  file=sys.stderr)
        print(f"\nPOST /invocations, {args.size}x{args.size} JPEG ({len(payload)} bytes), "
              f"{url}\n")
        print(format_table(rows))
        for r in rows:
            if r["first_error"]:
                print(f"concurrency {r['concurrency']} first error: {r['first_error']}")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(rows, fh, indent=2)
        return 1 if any(r["errors"] for r in rows) else 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
