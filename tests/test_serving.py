"""serve.py: a real gunicorn server in a subprocess on a loopback port, real HTTP.

A small Mask R-CNN (image_size 64) is trained for a couple of steps and saved inside the
test session (built once, shared with test_inference / test_predict through the session's
base temp folder). The server is started the way the container starts it (serve.py, the
port from SAGEMAKER_BIND_TO_PORT, workers from SAGEMAKER_MODEL_SERVER_WORKERS).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from pycocotools import mask as coco_mask
from testkit import free_port

ROOT = Path(__file__).resolve().parents[1]
CLASS_NAMES = ("holes", "chipping")
LIMIT = 6_291_456
TIMEOUT = 60  # seconds, per request


# ---- the model (shared by test_serving, test_inference, test_predict) ----------------------------
def build_test_model_dir(tmp_path_factory) -> str:
    """Train a tiny model for two steps and save it; built once per pytest session."""
    path = tmp_path_factory.getbasetemp() / "casting-test-model"
    if (path / "config.json").is_file():
        return str(path)
    import keras
    import tensorflow as tf

    from casting.config import Config
    from casting.model import MaskRCNN, save_model_dir

    cfg = Config(
        class_names=CLASS_NAMES, image_size=64, max_gt_instances=4, fpn_channels=32,
        rpn_conv_channels=32, fc_layers_size=64, pre_nms_limit=400,
        post_nms_rois_training=64, post_nms_rois_inference=64, train_rois_per_image=16,
        detection_max_instances=6, batch_size=2, norm="group",  # as train.py from scratch
    )
    s, n = cfg.image_size, cfg.max_gt_instances
    rng = np.random.default_rng(0)
    image = np.full((2, s, s, 3), 110.0, np.float32) + rng.normal(0, 5, (2, s, s, 3)).astype(np.float32)
    boxes = np.zeros((2, n, 4), np.float32)
    ids = np.zeros((2, n), np.int32)
    masks = np.zeros((2, n, s, s), np.uint8)
    for b, (y1, x1, y2, x2, c) in enumerate([(8, 10, 30, 40, 1), (30, 20, 56, 50, 2)]):
        boxes[b, 0] = (y1, x1, y2, x2)
        ids[b, 0] = c
        masks[b, 0, y1:y2, x1:x2] = 1
        image[b, y1:y2, x1:x2] = 40.0
    batch = {
        "image": image, "gt_boxes": boxes, "gt_class_ids": ids, "gt_masks": masks,
        "num_instances": np.array([1, 1], np.int32),
        "image_info": np.array([[s, s, 1.0, 0.0]] * 2, np.float32),
    }
    keras.utils.set_random_seed(0)
    model = MaskRCNN(cfg)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9, clipnorm=5.0))
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=2, epochs=1,
              shuffle=False, verbose=0)
    save_model_dir(model, str(path), saved_model=False)  # serving reads config + weights
    assert (path / "config.json").is_file()
    return str(path)


# ---- images -------------------------------------------------------------------------------------
def casting_image(h=96, w=128, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w, 3), 60, np.uint8)
    disk = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (min(h, w) * 0.4) ** 2
    img[disk] = 170
    for _ in range(3):
        cy, cx = rng.integers(15, h - 15), rng.integers(15, w - 15)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = 30
    return np.clip(img.astype(int) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)


def encode(arr, fmt="JPEG", mode=None) -> bytes:
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


JPEG = encode(casting_image())
PNG = encode(casting_image(80, 64, seed=1), "PNG")
B64 = base64.b64encode(JPEG).decode()


# ---- server process -----------------------------------------------------------------------------

def child_pids(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.add(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


class Server:
    """serve.py in a subprocess; ``args`` get ``--port`` appended unless the port comes from
    SAGEMAKER_BIND_TO_PORT in ``env_extra``."""

    def __init__(self, args, env_extra=None, log_path=None):
        env_extra = dict(env_extra or {})
        self.port = int(env_extra.get("SAGEMAKER_BIND_TO_PORT") or free_port())
        if "SAGEMAKER_BIND_TO_PORT" not in env_extra:
            args = [*args, "--port", str(self.port)]
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
                   CUDA_VISIBLE_DEVICES="-1", TF_NUM_INTEROP_THREADS="1",
                   TF_NUM_INTRAOP_THREADS="2", **env_extra)
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "serve.py"), *args], cwd=str(ROOT), env=env,
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def tail(self, n=3000) -> str:
        self.log.flush()
        return Path(self.log_path).read_text(errors="replace")[-n:]

    def wait_ready(self, limit=180.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if requests.get(self.url + "/ping", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        pytest.fail(f"server not ready after {limit} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return build_test_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    port = free_port()
    srv = Server(
        ["--model-dir", model_dir, "--host", "127.0.0.1"],
        env_extra={"SAGEMAKER_BIND_TO_PORT": str(port), "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
                   "SAGEMAKER_MODEL_SERVER_TIMEOUT": "60"},
        log_path=tmp_path_factory.mktemp("server") / "server.log",
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def post(server, data=None, content_type="image/jpeg", accept=None, params=None, headers=None,
         json_body=None):
    h = dict(headers or {})
    if content_type is not None:
        h["Content-Type"] = content_type
    if accept is not None:
        h["Accept"] = accept
    if json_body is not None:
        data = json.dumps(json_body).encode()
    return requests.post(server.url + "/invocations", data=data, headers=h, params=params,
                         timeout=TIMEOUT)


def check_detections(body, width, height):
    """Schema and internal consistency of one image's result."""
    assert body["width"] == width and body["height"] == height
    dets = body["detections"]
    assert isinstance(dets, list)
    scores = [d["score"] for d in dets]
    assert scores == sorted(scores, reverse=True)
    for d in dets:
        assert set(d) >= {"class_id", "class_name", "score", "box", "bbox", "area"}
        assert d["class_name"] == CLASS_NAMES[d["class_id"] - 1]
        assert 0.0 <= d["score"] <= 1.0
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert d["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.02)
        if "mask" in d and isinstance(d["mask"], dict):
            rle = d["mask"]
            assert rle["size"] == [height, width] and isinstance(rle["counts"], str)
            m = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            assert m.shape == (height, width)
            assert int(m.sum()) == d["area"]
    return dets


# ---- health and metadata -------------------------------------------------------------------------
def test_ping_is_fast_and_ok(server):
    t0 = time.monotonic()
    r = requests.get(server.url + "/ping", timeout=5)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert time.monotonic() - t0 < 2.0


def test_execution_parameters_reports_workers_from_env(server):
    r = requests.get(server.url + "/execution-parameters", timeout=5)
    assert r.status_code == 200
    assert r.json() == {"MaxConcurrentTransforms": 2, "BatchStrategy": "SINGLE_RECORD",
                        "MaxPayloadInMB": 6}


def test_two_workers_from_env(server):
    assert len(child_pids(server.proc.pid)) == 2


# ---- content types and Accept --------------------------------------------------------------------
@pytest.mark.parametrize("content_type", ["image/jpeg", "application/x-image",
                                          "application/octet-stream", "image/jpeg; charset=binary"])
def test_raw_jpeg_content_types_agree(server, content_type):
    r = post(server, JPEG, content_type, params={"min_score": "0"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    dets = check_detections(r.json(), 128, 96)
    assert dets, "min_score=0 should return the model's detections"
    reference = post(server, JPEG, "image/jpeg", params={"min_score": "0"}).json()
    assert r.json()["detections"] == reference["detections"]


def test_png_grayscale_and_rgba(server):
    for mode in (None, "L", "RGBA"):
        data = encode(casting_image(80, 64, seed=1), "PNG", mode)
        r = post(server, data, "image/png", params={"min_score": "0"})
        assert r.status_code == 200, (mode, r.text)
        check_detections(r.json(), 64, 80)


def test_json_image_matches_raw_bytes(server):
    raw = post(server, JPEG, "image/jpeg", params={"min_score": "0"}).json()
    r = post(server, content_type="application/json", json_body={"image": B64, "min_score": 0})
    assert r.status_code == 200, r.text
    assert r.json() == raw
    # data URL and {"b64": ...} forms are the same image
    r2 = post(server, content_type="application/json",
              json_body={"image": {"b64": "data:image/jpeg;base64," + B64}, "min_score": 0})
    assert r2.json() == raw


def test_json_instances_batch(server):
    body = {"instances": [B64, {"b64": base64.b64encode(PNG).decode()}, B64],
            "parameters": {"min_score": 0, "mask_format": "rle"}}
    r = post(server, content_type="application/json", json_body=body)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 3
    check_detections(preds[0], 128, 96)
    check_detections(preds[1], 64, 80)
    assert preds[0] == preds[2]
    single = post(server, JPEG, "image/jpeg", params={"min_score": "0"}).json()
    assert preds[0] == single  # same image, same answer, batched or not


@pytest.mark.parametrize("accept", ["image/png", "image/*", "application/json;q=0.5, image/png"])
def test_accept_png_returns_overlay(server, accept):
    r = post(server, JPEG, "image/jpeg", accept=accept, params={"min_score": "0"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/png"
    overlay = np.asarray(Image.open(io.BytesIO(r.content)))
    assert overlay.shape == (96, 128, 3)
    count = len(post(server, JPEG, "image/jpeg", params={"min_score": "0"}).json()["detections"])
    assert int(r.headers["X-Detections"]) == count
    original = np.asarray(Image.open(io.BytesIO(JPEG)))
    assert count == 0 or not np.array_equal(overlay, original)


def test_verdict_in_json_and_on_the_overlay(server):
    body = post(server, JPEG, params={"min_score": "0"}).json()
    dets = check_detections(body, 128, 96)
    # the default policy; this model has no part class: any detection >= 0.5 rejects
    strong = [d for d in dets if d["score"] >= 0.5]
    assert body["verdict"] == ("reject" if strong else "accept")
    assert body["defects"] == {c: sum(d["class_name"] == c for d in strong) for c in CLASS_NAMES}
    assert bool(body["reasons"]) == bool(strong) and body["part_found"] is False
    # a request's own policy, three ways: every detection counts, so it rejects
    strict = {"default": {"min_score": 0.0, "max_count": 0}}
    via_query = post(server, JPEG, params={"min_score": "0", "policy": json.dumps(strict)}).json()
    via_header = post(server, JPEG, headers={
        "X-Amzn-SageMaker-Custom-Attributes": "min_score=0;policy=" + json.dumps(strict)}).json()
    via_json = post(server, content_type="application/json",
                    json_body={"image": B64, "parameters": {"min_score": 0, "policy": strict}}).json()
    for got in (via_query, via_header, via_json):
        assert got["detections"] == dets
        assert got["verdict"] == ("reject" if dets else "accept")
        assert got["defects"] == {c: sum(d["class_name"] == c for d in dets) for c in CLASS_NAMES}
    # the overlay carries it: a header, and a red or green banner along the top
    png = post(server, JPEG, accept="image/png", params={"min_score": "0",
                                                         "policy": json.dumps(strict)})
    assert png.headers["X-Verdict"] == via_query["verdict"]
    top = np.asarray(Image.open(io.BytesIO(png.content)))[1, -2].tolist()
    assert top == ([200, 30, 30] if dets else [30, 150, 60])


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/*"])
def test_accept_json_variants(server, accept):
    r = post(server, JPEG, "image/jpeg", accept=accept)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    check_detections(r.json(), 128, 96)


def test_accept_unsupported_is_406(server):
    r = post(server, JPEG, "image/jpeg", accept="text/html")
    assert r.status_code == 406 and "Accept" in r.json()["error"]


def test_accept_png_with_several_instances_is_400(server):
    r = post(server, content_type="application/json", accept="image/png",
             json_body={"instances": [B64, B64]})
    assert r.status_code == 400 and "one" in r.json()["error"]


# ---- parameters ----------------------------------------------------------------------------------
def test_min_score_filters(server):
    everything = post(server, JPEG, params={"min_score": "0"}).json()["detections"]
    assert everything
    cut = sorted(d["score"] for d in everything)[len(everything) // 2]
    some = post(server, JPEG, params={"min_score": str(cut)}).json()["detections"]
    assert all(d["score"] >= cut for d in some)
    assert len(some) == sum(d["score"] >= cut for d in everything)
    assert post(server, JPEG, params={"min_score": "1"}).json()["detections"] == [
        d for d in everything if d["score"] >= 1.0]


def test_classes_filter_three_ways(server):
    everything = post(server, JPEG, params={"min_score": "0"}).json()["detections"]
    want = [d for d in everything if d["class_name"] == "chipping"]
    via_query = post(server, JPEG, params={"min_score": "0", "classes": "chipping"}).json()
    via_header = post(server, JPEG, headers={
        "X-Amzn-SageMaker-Custom-Attributes": "min_score=0;classes=chipping"}).json()
    via_json = post(server, content_type="application/json",
                    json_body={"image": B64, "min_score": 0, "classes": ["chipping"]}).json()
    via_id = post(server, content_type="application/json",
                  json_body={"image": B64, "min_score": 0, "classes": [2]}).json()
    for got in (via_query, via_header, via_json, via_id):
        assert got["detections"] == want


def test_mask_formats(server):
    none = post(server, JPEG, params={"min_score": "0", "mask_format": "none"}).json()["detections"]
    assert none and all("mask" not in d for d in none)
    poly = post(server, JPEG, params={"min_score": "0", "mask_format": "polygon"}).json()["detections"]
    rle = post(server, JPEG, params={"min_score": "0"}).json()["detections"]
    assert len(poly) == len(rle) == len(none)
    for p, r in zip(poly, rle):
        assert isinstance(p["mask"], list)
        assert all(len(ring) >= 6 and len(ring) % 2 == 0 for ring in p["mask"])
        if r["area"] >= 20:
            rles = coco_mask.frPyObjects(p["mask"], 96, 128)
            area = coco_mask.decode(coco_mask.merge(rles)).sum()
            assert abs(int(area) - r["area"]) <= 0.35 * r["area"] + 10


@pytest.mark.parametrize("params,needle", [
    ({"min_score": "abc"}, "min_score"),
    ({"min_score": "1.5"}, "min_score"),
    ({"classes": "nosuch"}, "unknown class"),
    ({"classes": "9"}, "out of range"),
    ({"mask_format": "bitmap"}, "mask_format"),
    ({"policy": "/etc/passwd"}, "policy must be a JSON object"),
    ({"policy": '{"classes": {"rust": {}}}'}, "classes.rust: not a class of this model"),
    ({"policy": '{"default": {"min_score": 2}}'}, "default.min_score must be"),
])
def test_bad_parameters_are_400(server, params, needle):
    r = post(server, JPEG, params=params)
    assert r.status_code == 400
    assert needle in r.json()["error"]


# ---- bad payloads --------------------------------------------------------------------------------
def _huge_png():
    buf = io.BytesIO()
    Image.new("L", (5000, 5000), 128).save(buf, format="PNG")
    return buf.getvalue()


BAD_PAYLOADS = [
    ("random bytes", os.urandom(4096), "image/jpeg", 400, "identify"),
    ("random bytes png", os.urandom(100), "image/png", 400, "identify"),
    ("truncated jpeg", JPEG[: len(JPEG) // 2], "image/jpeg", 400, "image"),
    ("jpeg header only", JPEG[:200], "image/jpeg", 400, "image"),
    ("empty body", b"", "image/jpeg", 400, "empty"),
    ("empty json", b"", "application/json", 400, "empty"),
    ("not json", b"{image: nope", "application/json", 400, "JSON"),
    ("json list", b"[1, 2]", "application/json", 400, "object"),
    ("json wrong key", b'{"img": "abc"}', "application/json", 400, "img"),
    ("json both keys", json.dumps({"image": B64, "instances": [B64]}).encode(),
     "application/json", 400, "exactly one"),
    ("json image not str", b'{"image": 123}', "application/json", 400, "base64"),
    ("json bad base64", b'{"image": "%%%not base64%%%"}', "application/json", 400, "base64"),
    ("json base64 of junk", json.dumps({"image": base64.b64encode(os.urandom(64)).decode()}).encode(),
     "application/json", 400, "identify"),
    ("json empty instances", b'{"instances": []}', "application/json", 400, "non-empty"),
    ("json bad instance", json.dumps({"instances": [B64, "@@@"]}).encode(),
     "application/json", 400, "instances[1]"),
    ("json latin-1", b'{"image": "\xff\xfe"}', "application/json", 400, "JSON"),
    ("huge image", _huge_png(), "image/png", 413, "pixels"),
    ("over 6 MB", b"\xff" * (LIMIT + 1), "image/jpeg", 413, "6291456"),
    ("exactly 6 MB", b"\xff" * LIMIT, "image/jpeg", 400, "identify"),
    ("text/plain", b"hello", "text/plain", 415, "Content-Type"),
    ("no content type", JPEG, None, 415, "Content-Type"),
    ("form", b"a=b", "application/x-www-form-urlencoded", 415, "Content-Type"),
]


def test_bad_payload_matrix_never_kills_a_worker(server):
    workers_before = child_pids(server.proc.pid)
    assert len(workers_before) == 2
    failures = []
    for name, data, ctype, status, needle in BAD_PAYLOADS:
        r = post(server, data, ctype)
        body = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else {}
        if r.status_code != status or needle.lower() not in body.get("error", "").lower():
            failures.append((name, r.status_code, r.text[:200]))
        elif body.get("status") != status:
            failures.append((name, "status field", body))
    assert not failures, failures
    # every worker survived and still answers correctly
    assert child_pids(server.proc.pid) == workers_before
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200
    for _ in range(4):
        ok = post(server, JPEG)
        assert ok.status_code == 200
        check_detections(ok.json(), 128, 96)


def test_chunked_body_over_limit_is_413(server):
    def chunks():
        for _ in range(7):
            yield b"\0" * (1024 * 1024)

    r = requests.post(server.url + "/invocations", data=chunks(),
                      headers={"Content-Type": "image/jpeg"}, timeout=TIMEOUT)
    assert r.status_code == 413, r.text
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/invocations", 405),
    ("POST", "/ping", 405),
    ("PUT", "/invocations", 405),
    ("GET", "/nope", 404),
    ("POST", "/invoke", 404),
])
def test_wrong_paths_and_methods(server, method, path, status):
    r = requests.request(method, server.url + path, data=b"x", timeout=10)
    assert r.status_code == status
    assert r.json()["status"] == status


# ---- concurrency ---------------------------------------------------------------------------------
def test_concurrent_requests_are_isolated(server):
    images = [encode(casting_image(96, 128, seed=s)) for s in range(3)]
    expected = [post(server, im, params={"min_score": "0"}).json() for im in images]
    stop = threading.Event()
    ping_times = []

    def pinger():
        while not stop.is_set() and len(ping_times) < 200:
            t0 = time.monotonic()
            r = requests.get(server.url + "/ping", timeout=5)
            assert r.status_code == 200
            ping_times.append(time.monotonic() - t0)
            time.sleep(0.05)

    def one(i):
        kind = i % 3
        if kind == 0:
            r = post(server, images[i % 3], params={"min_score": "0"})
        elif kind == 1:
            r = post(server, content_type="application/json", json_body={
                "image": base64.b64encode(images[i % 3]).decode(), "min_score": 0})
        else:
            r = post(server, images[i % 3], "application/x-image",
                     headers={"X-Amzn-SageMaker-Custom-Attributes": "min_score=0"})
        return i, r.status_code, r.json()

    t = threading.Thread(target=pinger, daemon=True)
    t.start()
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(one, range(12)))
    stop.set()
    t.join(10)
    for i, status, body in results:
        assert status == 200
        assert body == expected[i % 3], f"request {i} got another image's result"
    assert ping_times and max(ping_times) < 2.0, max(ping_times)


# ---- process lifecycle ---------------------------------------------------------------------------
def test_missing_model_dir_fails_fast(tmp_path):
    srv = Server(["--model-dir", str(tmp_path / "nope")],
                 log_path=tmp_path / "log")
    try:
        assert srv.proc.wait(60) == 2
        assert "does not exist" in srv.tail()
    finally:
        srv.stop()


def test_broken_model_stops_the_server(tmp_path, model_dir):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text(Path(model_dir, "config.json").read_text())
    (broken / "model.weights.h5").write_bytes(b"not an h5 file")
    srv = Server(["--model-dir", str(broken), "--host", "127.0.0.1"],
                 log_path=tmp_path / "log")
    try:
        code = srv.proc.wait(150)
        assert code != 0
        assert "model failed to load" in srv.tail(20000)
    finally:
        srv.stop()


def test_a_bad_endpoint_policy_stops_the_server(tmp_path, model_dir):
    srv = Server(["--model-dir", model_dir, "--host", "127.0.0.1"],
                 env_extra={"CASTING_POLICY": '{"classes": {"rust": {}}}'},
                 log_path=tmp_path / "log")
    try:
        code = srv.proc.wait(150)
        assert code != 0
        log = srv.tail(20000)
        assert "model failed to load" in log and "classes.rust: not a class of this model" in log
    finally:
        srv.stop()


def test_sigterm_finishes_in_flight_and_exits_zero(model_dir, tmp_path):
    srv = Server(["--model-dir", model_dir, "--host", "127.0.0.1"],
                 log_path=tmp_path / "log")
    try:
        srv.wait_ready()
        workers = child_pids(srv.proc.pid)
        assert len(workers) == 1  # default SAGEMAKER_MODEL_SERVER_WORKERS
        results = []

        def in_flight():
            body = {"instances": [B64] * 4, "min_score": 0}
            results.append(post(srv, content_type="application/json", json_body=body))

        t = threading.Thread(target=in_flight)
        t.start()
        time.sleep(0.3)  # the request is being served
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(30)
        elapsed = time.monotonic() - t0
        t.join(30)
        assert code == 0, srv.tail()
        assert elapsed < 25
        assert results and results[0].status_code == 200
        assert len(results[0].json()["predictions"]) == 4
        assert not any(os.path.exists(f"/proc/{p}") for p in workers)
        with pytest.raises(requests.ConnectionError):
            requests.get(srv.url + "/ping", timeout=2)
        log = srv.tail(10**6)
        for noise in ("cuInit", "cudart_stub", "absl::InitializeLog"):  # CPU start-up noise
            assert noise not in log, log[-2000:]
    finally:
        srv.stop()
