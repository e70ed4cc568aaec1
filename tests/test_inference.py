"""casting.inference: image decoding, parameters, and Predictor against the model it wraps."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from casting import masks as mask_utils
from casting.inference import (
    ImageDecodeError,
    ImageTooLargeError,
    ParameterError,
    decode_image,
    load_image,
    parse_classes,
    parse_mask_format,
    parse_min_score,
    resolve_model_dir,
)

try:  # the shared tiny model and test images live in test_serving
    from test_serving import build_test_model_dir, casting_image
except ImportError:  # tests/ made a package
    from tests.test_serving import build_test_model_dir, casting_image

CLASS_NAMES = ("holes", "chipping")


def _png(arr, mode=None, **save):
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr, mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG", **save)
    return buf.getvalue()


def _jpeg(arr, **save):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, **save)
    return buf.getvalue()


def _gradient(h=30, w=50):
    yy, xx = np.mgrid[:h, :w]
    return np.stack([yy * 8 % 256, xx * 5 % 256, (yy + xx) % 256], -1).astype(np.uint8)


# ---- decoding -------------------------------------------------------------------------------------
def test_png_decodes_exactly():
    arr = _gradient()
    out = decode_image(_png(arr))
    assert out.dtype == np.uint8 and out.shape == (30, 50, 3)
    assert np.array_equal(out, arr)


def test_grayscale_and_rgba_and_palette_become_rgb():
    gray = _gradient()[..., 0]
    out = decode_image(_png(gray))
    assert out.shape == (30, 50, 3)
    assert all(np.array_equal(out[..., c], gray) for c in range(3))
    rgba = np.dstack([_gradient(), np.full((30, 50), 7, np.uint8)])
    assert np.array_equal(decode_image(_png(rgba)), _gradient())
    pal = Image.fromarray(_gradient()).convert("P")
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    assert decode_image(buf.getvalue()).shape == (30, 50, 3)


def test_sixteen_bit_png_is_scaled():
    arr16 = (np.arange(30 * 50, dtype=np.uint32).reshape(30, 50) * 40).astype(np.uint16)
    im = Image.fromarray(arr16)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    out = decode_image(buf.getvalue())
    assert out.shape == (30, 50, 3)
    assert np.allclose(out[..., 0], arr16 / 65535 * 255, atol=1)


def test_exif_orientation_is_applied():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = 255  # white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    out = decode_image(_jpeg(arr, exif=exif.tobytes()))
    assert out.shape == (40, 20, 3)
    # after a clockwise rotation the left band is at the top
    assert out[:8].mean() > 200 and out[-8:].mean() < 50


@pytest.mark.parametrize("data,exc,needle", [
    (b"", ImageDecodeError, "empty"),
    (os.urandom(300), ImageDecodeError, "identify"),
    (b"GIF89a" + b"\0" * 3, ImageDecodeError, "image"),
])
def test_undecodable(data, exc, needle):
    with pytest.raises(exc, match=needle):
        decode_image(data)


def test_truncated_jpeg():
    data = _jpeg(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match="truncated|image"):
        decode_image(data[: len(data) // 2])


def test_too_many_pixels():
    buf = io.BytesIO()
    Image.new("L", (300, 200)).save(buf, format="PNG")
    assert decode_image(buf.getvalue(), max_pixels=60_000).shape == (200, 300, 3)
    with pytest.raises(ImageTooLargeError, match="59999"):
        decode_image(buf.getvalue(), max_pixels=59_999)
    with pytest.raises(ImageTooLargeError):
        load_image(np.zeros((200, 300), np.uint8), max_pixels=100)


def test_load_image_sources(tmp_path):
    arr = _gradient()
    path = tmp_path / "a.png"
    path.write_bytes(_png(arr))
    for src in (str(path), path, Image.fromarray(arr), arr, arr.astype(np.float32), _png(arr)):
        assert np.array_equal(load_image(src), arr)
    with pytest.raises(ImageDecodeError):
        load_image(np.zeros((4, 4, 2)))


# ---- parameters ------------------------------------------------------------------------------------
def test_parse_min_score():
    assert parse_min_score(None) is None and parse_min_score("") is None
    assert parse_min_score("0.25") == 0.25 and parse_min_score(1) == 1.0
    for bad in ("x", -0.1, 1.01, float("nan"), True, [0.5]):
        with pytest.raises(ParameterError):
            parse_min_score(bad)


def test_parse_classes():
    assert parse_classes(None, CLASS_NAMES) is None
    assert parse_classes("chipping", CLASS_NAMES) == {2}
    assert parse_classes("holes, 2", CLASS_NAMES) == {1, 2}
    assert parse_classes(["holes", 1], CLASS_NAMES) == {1}
    for bad in ("disk", [3], [0], "0", {"a": 1}, [True]):
        with pytest.raises(ParameterError):
            parse_classes(bad, CLASS_NAMES)


def test_parse_mask_format():
    assert parse_mask_format(None) == "rle"
    assert parse_mask_format("Polygons") == "polygon"
    assert parse_mask_format("none") == "none"
    with pytest.raises(ParameterError):
        parse_mask_format("png")


def test_resolve_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_model_dir(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_dir(tmp_path)
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "config.json").write_text("{}")
    assert resolve_model_dir(tmp_path) == str(tmp_path / "inner")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_dir(tmp_path) == str(tmp_path)


# ---- Predictor with a real (tiny, briefly trained) model -----------------------------------------
@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from casting.inference import Predictor

    return Predictor(build_test_model_dir(tmp_path_factory))


def _image(seed=0, h=72, w=100):
    return casting_image(h, w, seed)


def test_predictor_matches_the_model(predictor):
    img = _image()
    raw = predictor.model.detect([img], min_confidence=0.0)[0]
    dets = predictor.predict(img, min_score=0.0)
    assert predictor.class_names == CLASS_NAMES
    assert len(dets) == len(raw["scores"]) > 0
    order = np.argsort(-raw["scores"], kind="stable")
    for d, k in zip(dets, order):
        y1, x1, y2, x2 = raw["boxes"][k]
        assert d["box"] == pytest.approx(
            [np.clip(x1, 0, 100), np.clip(y1, 0, 72), np.clip(x2, 0, 100), np.clip(y2, 0, 72)],
            abs=0.01)
        assert d["class_id"] == int(raw["class_ids"][k])
        assert d["score"] == pytest.approx(float(raw["scores"][k]), abs=1e-4)
        assert np.array_equal(mask_utils.rle_to_mask(d["mask"]), raw["masks"][k])
        assert d["area"] == int(raw["masks"][k].sum())


def test_predict_filters_and_formats(predictor):
    img = _image(1)
    everything = predictor.predict(img, min_score=0.0)
    assert everything
    cut = everything[len(everything) // 2]["score"]
    assert predictor.predict(img, min_score=cut) == [d for d in everything if d["score"] >= cut]
    only = predictor.predict(img, min_score=0.0, classes=["chipping"])
    assert only == [d for d in everything if d["class_id"] == 2]
    bare = predictor.predict(img, min_score=0.0, mask_format="none")
    assert [{k: v for k, v in d.items() if k != "mask"} for d in everything] == bare
    polys = predictor.predict(img, min_score=0.0, mask_format="polygon")
    for p, r in zip(polys, everything):
        m = mask_utils.rle_to_mask(r["mask"])
        back = mask_utils.polygons_to_mask(p["mask"], 72, 100)
        if m.sum() >= 20:
            inter = np.logical_and(back, m).sum()
            assert inter / np.logical_or(back, m).sum() > 0.6


def test_predict_batch_equals_single(predictor):
    a, b = _image(2), _image(3, 64, 64)
    batch = predictor.predict_batch([a, b], min_score=0.0)
    assert batch[0] == predictor.predict(a, min_score=0.0)
    assert batch[1] == predictor.predict(b, min_score=0.0)


def test_predict_accepts_bytes_and_rejects_bad_input(predictor):
    img = _image(4)
    assert predictor.predict(_png(img), min_score=0.0) == predictor.predict(img, min_score=0.0)
    with pytest.raises(ImageDecodeError):
        predictor.predict(b"nope")
    with pytest.raises(ParameterError):
        predictor.predict(img, classes=["disk"])


def test_overlay_shape(predictor):
    img = _image(5)
    (raw,) = predictor.detect([img], min_score=0.0)
    out = predictor.overlay(img, raw)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert len(raw.scores) == 0 or not np.array_equal(out, img)


# ---- the verdict (casting.qc) on the real model's detections --------------------------------------
def test_judge_counts_every_class_down_to_the_policy_score(predictor):
    img = _image(6)
    everything = predictor.predict(img, min_score=0.0)
    assert everything
    strict = {"default": {"min_score": 0.0, "max_count": 0}}
    ((raw, verdict),) = predictor.judge([img], min_score=0.99, classes=["holes"], policy=strict)
    # display: what min_score and classes keep; verdict: every detection of every class
    assert all(s >= 0.99 for s in raw.scores) and set(raw.class_ids.tolist()) <= {1}
    assert verdict.rejected
    assert verdict.defects == {c: sum(d["class_name"] == c for d in everything)
                               for c in CLASS_NAMES}
    assert sorted(k for r in verdict.reasons for k in r["detections"]) == list(
        range(len(everything)))
    lenient = {"default": {"min_score": 1.0}}
    ((_, ok),) = predictor.judge([img], policy=lenient)
    assert ok.verdict == "accept" and ok.reasons == []


def test_policy_from_the_model_folder_and_the_environment(tmp_path_factory, monkeypatch):
    import shutil

    from casting.inference import Predictor
    from casting.qc import PolicyError

    folder = tmp_path_factory.mktemp("with-policy") / "model"
    shutil.copytree(build_test_model_dir(tmp_path_factory), folder)
    (folder / "policy.json").write_text('{"classes": {"holes": []}}')
    monkeypatch.delenv("CASTING_POLICY", raising=False)
    p = Predictor(folder, warmup=False)
    assert p.policy.source == str(folder / "policy.json")
    assert [r.class_name for r in p.policy.rules] == ["chipping"]
    monkeypatch.setenv("CASTING_POLICY", '{"default": {"min_score": 0.9}}')
    p = Predictor(folder, warmup=False)
    assert p.policy.source == "the policy given inline"
    assert [r.min_score for r in p.policy.rules] == [0.9, 0.9]
    assert p.policy_for({"default": {"min_score": 0.3}}).rules[0].min_score == 0.3
    with pytest.raises(PolicyError, match="classes.disk: not a class"):
        p.policy_for({"classes": {"disk": {}}})
    monkeypatch.setenv("CASTING_POLICY", str(tmp_path_factory.getbasetemp() / "nope.json"))
    with pytest.raises(PolicyError, match="nope.json: cannot read the policy file"):
        Predictor(folder, warmup=False)
