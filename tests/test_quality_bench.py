"""bench/quality.py: parsing ours and the peer's results into one shape, the budget and
pass-through arguments, and one tiny end-to-end run."""

import json
import math
import subprocess
import sys

import pytest

from testkit import ROOT, SMALL, _env, _synthetic

sys.path.insert(0, str(ROOT / "bench"))

import quality  # noqa: E402
import quality_results as qr  # noqa: E402

# The end of a peer_quality_torchvision.py stdout (its final log(...) lines), with a class
# that has no detections (nan) as the peer prints it.
PEER_LOG = """\
[data] test: 38 images, 235 objects {'disk': 38, 'holes': 15, 'chipping': 110, 'deburring': 72} skipped=0
[train] iter 880 ep 11.73 t=58.7min (4.00s/it) lr=0.01000 loss=1.2345 [classifier=0.1] gnorm=3.21
[train] done: 884 iters, 11.79 epochs (11 full passes), 58.93 min, 4.00 s/it
[train] loss curve (mean per 20-iter window): first=(20, 5.1) last=(880, 1.2) min=(860, 1.1)
[eval] predicted 38 images, 1900 detections, 61.2s
[eval] ---- iouType=segm ----
 Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.301
[result] settings: maskrcnn_resnet50_fpn(weights=None, ...); params=44000000 trainable=44000000
[result] segm: AP=0.3012 AP50=0.4521 AP75=0.3100 per-class AP50 disk=1.0000, holes=0.3800, chipping=0.0000, deburring=nan defect_AP50=0.1900; per-class AP disk=0.9000, holes=0.2000, chipping=0.0000, deburring=nan
[result] bbox: AP=0.2500 AP50=0.4000 AP75=0.2000 per-class AP50 disk=1.0000, holes=0.3000, chipping=0.0100, deburring=0.0200 defect_AP50=0.1100; per-class AP disk=0.8000, holes=0.1000, chipping=0.0010, deburring=0.0020
peer_quality torchvision budget_min=100000 iters=884 epochs=11.79 segm_AP=0.3012 segm_AP50=0.4521 defect_segm_AP50=0.1900 disk_AP50=1.0000 holes_AP50=0.3800 chipping_AP50=0.0000 deburring_AP50=nan bbox_AP50=0.4000
"""

# Our evaluation.json (casting.evaluation + train.py's extras); chipping has no ground truth.
EVALUATION = {
    "num_images": 4, "num_gt_instances": {"disk": 4, "holes": 2, "chipping": 0,
                                          "deburring": 3},
    "num_detections": 30,
    "bbox": {"AP": 0.2, "AP50": 0.5, "AP75": 0.1, "AP_small": 0.05, "AP_medium": None,
             "AP_large": 0.9, "AR100": 0.3,
             "per_class": {"disk": 0.8, "holes": 0.1, "chipping": None, "deburring": 0.0},
             "per_class_AP50": {"disk": 1.0, "holes": 0.4, "chipping": None,
                                "deburring": 0.2}},
    "segm": {"AP": 0.25, "AP50": 0.6, "AP75": 0.2, "AP_small": None, "AP_medium": None,
             "AP_large": 0.95, "AR100": 0.35,
             "per_class": {"disk": 0.9, "holes": 0.2, "chipping": None, "deburring": 0.05},
             "per_class_AP50": {"disk": 1.0, "holes": 0.5, "chipping": None,
                                "deburring": 0.3}},
    "epochs": 1, "global_step": 40, "class_names": ["chipping", "deburring", "disk", "holes"],
    "train_images": 150, "evaluated_images": 4, "training_seconds": 99.0,
}

TRAIN_LOG = """\
Stage 1/1: layers=all lr=0.01, epochs 1-2 of 2
20/20 - 61s - 3s/step - loss: 2.1 - val_loss: 2.0
Checkpoint (epoch end): /x/ckpt-0000000020: 1 epochs + 0 steps done, global step 20
20/20 - 59s - 3s/step - loss: 1.9 - val_loss: 1.9
[eval] epoch=2 bbox_AP=0.2 segm_AP=0.25
"""


def nan(x):
    return isinstance(x, float) and math.isnan(x)


# ---- parsing into the common shape -------------------------------------------------------
def test_peer_log_parses_into_the_common_shape():
    peer = qr.parse_peer_log(PEER_LOG)
    assert peer["segm"]["AP"] == 0.3012 and peer["segm"]["AP50"] == 0.4521
    assert peer["segm"]["per_class_AP50"]["holes"] == 0.38
    assert nan(peer["segm"]["per_class_AP50"]["deburring"])
    assert peer["segm"]["per_class_AP"]["disk"] == 0.9 and nan(peer["segm"]["AP_small"])
    assert peer["bbox"]["per_class_AP"]["deburring"] == 0.002
    assert peer["defect_segm_AP50"] == pytest.approx((0.38 + 0.0) / 2)  # nan ignored
    assert peer["steps"] == 884 and peer["s_per_step"] == 4.0
    assert peer["train_s"] == pytest.approx(58.93 * 60)
    assert peer["dets_per_img"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match=r"peer\.log: no '\[result\] bbox:' line"):
        qr.parse_peer_log(PEER_LOG.replace("[result] bbox:", "[resul] bbox:"), "peer.log")


def test_our_evaluation_and_log_parse_into_the_same_shape():
    ours = qr.with_timing(qr.from_evaluation(EVALUATION), TRAIN_LOG, 40)
    per_class = ours["segm"]["per_class_AP50"]
    assert nan(per_class.pop("chipping"))  # no ground truth in the test set
    assert per_class == {"deburring": 0.3, "disk": 1.0, "holes": 0.5}
    assert ours["defect_segm_AP50"] == pytest.approx(0.4)  # holes, deburring; not disk
    assert nan(ours["segm"]["AP_small"]) and ours["bbox"]["AP_small"] == 0.05
    assert ours["dets_per_img"] == 7.5 and ours["steps"] == 40
    assert qr.keras_epoch_seconds(TRAIN_LOG) == [61.0, 59.0]
    assert ours["train_s"] == 120.0 and ours["s_per_step"] == 3.0
    older = dict(EVALUATION, segm={k: v for k, v in EVALUATION["segm"].items()
                                   if k != "per_class_AP50"})
    assert nan(qr.from_evaluation(older)["defect_segm_AP50"])  # older files: no AP50s
    assert nan(qr.with_timing(qr.from_evaluation(EVALUATION), "no epochs", 40)["s_per_step"])
    # the part-level figures of the acceptance policy, where evaluation.json has them
    assert nan(ours["part_catch_rate"]) and nan(ours["part_false_reject_rate"])
    judged = dict(EVALUATION, parts={"catch_rate": 0.75, "false_reject_rate": 0.25})
    flat = qr.figures(qr.from_evaluation(judged), EVALUATION["class_names"])
    assert (flat["part_catch_rate"], flat["part_false_reject_rate"]) == (0.75, 0.25)
    assert "part_catch_rate=0.7500" in qr.quality_line({"label": "x"}, dict(
        flat, s_per_step=1.0, train_s=1.0, wall_s=1.0))


def test_figures_table_and_line_compare_like_with_like():
    ours = qr.with_timing(qr.from_evaluation(EVALUATION), TRAIN_LOG, 40)
    ours["wall_s"] = 200.0
    peer = qr.parse_peer_log(PEER_LOG)
    mine = qr.figures(ours, EVALUATION["class_names"])
    theirs = qr.figures(peer, EVALUATION["class_names"])
    assert list(mine) == list(theirs)
    assert [k for k in mine if k[:-5] in EVALUATION["class_names"]] == [
        "disk_AP50", "holes_AP50", "chipping_AP50", "deburring_AP50"]  # display order
    ratio = qr.ratios(mine, theirs)
    assert ratio["holes_AP50"] == pytest.approx(0.5 / 0.38)
    assert nan(ratio["chipping_AP50"]) and nan(ratio["segm_APs"])  # no value / peer has 0
    text = qr.table(mine, theirs)
    assert "segm AP50 holes" in text and "ours/peer" in text and "1.3158" in text
    line = qr.quality_line({"label": "x", "steps": 40, "batch": 2}, mine, theirs)
    fields = dict(item.split("=", 1) for item in line.split()[1:])
    assert line.startswith("quality ")
    for key in ("label", "steps", "batch", "s_per_step", "wall_s", "segm_AP", "segm_AP50",
                "defect_segm_AP50", "disk_AP50", "holes_AP50", "chipping_AP50",
                "deburring_AP50", "bbox_AP50", "segm_APs", "dets_per_img",
                "peer_defect_segm_AP50"):
        assert key in fields, key
    assert fields["holes_AP50"] == "0.5000" and fields["segm_APs"] == "nan"
    assert fields["peer_segm_AP50"] == "0.4521" and fields["steps"] == "40"
    assert json.loads(json.dumps(qr.json_ready({"a": [float("nan")]}))) == {"a": [None]}


# ---- arguments -----------------------------------------------------------------------------
def _budget(steps, *extra):
    return quality.plan_budget(steps, quality.passthrough_options(list(extra)))


def test_steps_become_epochs_times_steps_per_epoch():
    assert _budget(200) == (1, 200)  # one epoch: evaluation and checkpoints stay rare
    assert _budget(200, "--steps-per-epoch", "50") == (4, 50)
    assert _budget(200, "--epochs=4") == (4, 50)
    assert _budget(200, "--epochs", "4", "--steps_per_epoch", "50") == (4, 50)
    sched = '[{"epochs": 1, "layers": "heads"}, {"epochs": 3, "layers": "all"}]'
    assert _budget(200, "--schedule", sched) == (4, 50)
    assert _budget(200, "--config", json.dumps({"schedule": json.loads(sched)})) == (4, 50)
    with pytest.raises(quality.BenchError, match="schedule's 2 stages"):
        _budget(201, "--schedule", sched)
    with pytest.raises(quality.BenchError, match="not the budget --steps 200"):
        _budget(200, "--schedule", sched, "--steps-per-epoch", "40")
    with pytest.raises(quality.BenchError, match="not a multiple of --steps-per-epoch"):
        _budget(200, "--steps-per-epoch", "30")
    with pytest.raises(quality.BenchError, match="needs a value"):
        quality.passthrough_options(["--layers"])


def test_pass_through_is_kept_and_owned_options_are_refused(tmp_path):
    args, extra = quality.parse_args(["--train", "a", "--test", "b", "--steps", "8",
                                      "--batch-size", "1", "--", "--learning-rate", "0.02",
                                      "--init_weights", "imagenet", "--layers=heads"])
    assert extra == ["--learning-rate", "0.02", "--init_weights", "imagenet",
                     "--layers=heads"]
    cmd = quality.train_command(args, extra, 2, 4, quality.run_folders(str(tmp_path)))
    assert cmd[-5:] == extra  # unchanged, at the end
    assert cmd.count("--init-weights") == 0  # passed through: no default added
    text = " ".join(cmd)
    for part in ("--train a --validation b", "--epochs 2 --steps-per-epoch 4",
                 "--batch-size 1", "--image-size 512", "--seed 0",
                 "--checkpoint-every-steps 0", "--validation-steps 1", "--saved-model False",
                 f"--checkpoint-dir {tmp_path}/checkpoints"):
        assert part in text, part
    _, extra = quality.parse_args(["--train", "a", "--test", "b", "--steps", "8"])
    cmd = quality.train_command(args, extra, 1, 8, quality.run_folders(str(tmp_path)))
    assert cmd[cmd.index("--init-weights") + 1] == "none"
    with pytest.raises(quality.BenchError, match="bench/quality.py --batch-size instead"):
        quality.check_owned(quality.passthrough_options(["--batch_size", "4"]))
    with pytest.raises(quality.BenchError, match="--config image_size is set by the bench"):
        quality.check_owned(quality.passthrough_options(["--config", '{"image_size": 64}']))


def test_peer_without_its_venv_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quality, "PEER_PYTHON", str(tmp_path / "no-venv" / "bin" / "python"))
    (tmp_path / "a").mkdir()
    rc = quality.main(["--train", str(tmp_path / "a"), "--test", str(tmp_path / "a"),
                       "--steps", "2", "--peer", "--work", str(tmp_path / "w")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "no-venv/bin/python is missing" in err and "setup_torch.sh" in err
    assert not (tmp_path / "w").exists()  # nothing was started


# ---- end to end ----------------------------------------------------------------------------
@pytest.mark.slow(seconds=45)
def test_two_steps_end_to_end_with_a_saved_peer_log(tmp_path):
    train = _synthetic(tmp_path / "train", count=4, seed=3)
    test = _synthetic(tmp_path / "test", count=2, seed=4)
    peer_log = tmp_path / "peer.log"
    peer_log.write_text(PEER_LOG)
    out = tmp_path / "q.json"
    config = {k: v for k, v in SMALL.items() if k != "validation_steps"}
    cmd = [sys.executable, str(ROOT / "bench" / "quality.py"), "--train", train,
           "--test", test, "--steps", "2", "--image-size", "64", "--label", "tiny",
           "--work", str(tmp_path / "work"), "--out", str(out), "--peer-log", str(peer_log),
           "--", "--config", json.dumps(config), "--augment", "False", "--overlays", "0"]
    proc = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("quality label=tiny steps=2 epochs=1 steps_per_epoch=2 ")
    assert "peer trains and scores at 512 px, ours at 64 px" in proc.stdout
    fields = dict(item.split("=", 1) for item in lines[-1].split()[1:])
    report = json.loads(out.read_text())
    ours = report["ours"]
    assert report["line"] == lines[-1]
    assert report["settings"]["train_py_args"][-4:] == ["--augment", "False", "--overlays",
                                                        "0"]
    for key in ("s_per_step", "train_s", "wall_s", "dets_per_img"):
        assert ours[key] > 0 and math.isfinite(float(fields[key])), key
    assert ours["steps"] == 2
    for key in ("segm_AP", "segm_AP50", "bbox_AP50", "disk_AP50"):  # disk is in every image
        assert 0.0 <= ours[key] <= 1.0, key
    for key in ("holes_AP50", "chipping_AP50", "deburring_AP50", "defect_segm_AP50",
                "segm_APs"):  # null (NaN) where the two test images lack the class
        assert ours[key] is None or 0.0 <= ours[key] <= 1.0, key
        assert fields[key] == "nan" if ours[key] is None else math.isfinite(float(fields[key]))
    assert report["peer"]["holes_AP50"] == 0.38 and "ours_over_peer" in report
    assert "ours/peer" in proc.stdout


def test_stages_figures_per_class_on_a_tiny_model(tmp_path_factory):
    """bench/stages.py: per-class stage figures, one row per object, in their ranges."""
    try:
        from test_serving import build_test_model_dir
    except ImportError:  # pragma: no cover - run from the repository root
        from tests.test_serving import build_test_model_dir
    import stages

    from casting.data import load_dataset
    from casting.model import load_model_dir

    model = load_model_dir(build_test_model_dir(tmp_path_factory))
    folder = _synthetic(tmp_path_factory.mktemp("stages") / "data", count=3, seed=4)
    ds = load_dataset(folder, class_map={"disk": None, "deburring": None},
                      class_names=model.config.class_names)
    counts = {}
    for rec in ds.records:
        for inst in rec.instances:
            name = ds.class_names[inst.class_id - 1]
            counts[name] = counts.get(name, 0) + 1
    assert counts, "the synthetic images should hold holes or chips"
    table = stages.stage_table(model, ds, batch_size=2)
    assert {k: v["objects"] for k, v in table.items()} == counts
    for row in table.values():
        assert 0.0 < row["anchor_best_iou"] <= 1.0
        assert row["positive_anchors"] >= 1  # every object gets at least its best anchor
        assert row["rpn_recall_100"] <= row["rpn_recall_1000"] <= 1.0
        assert 0.0 <= row["p_true"] + row["p_background"] <= 1.0 + 1e-6
        assert 0.0 <= row["accuracy"] <= 1.0


def test_tiles_bench_builds_frames_at_native_scale_and_scores_three_ways(tmp_path_factory,
                                                                          capsys):
    """bench/tiles.py: frames are grid x grid source images pasted at their own pixels with
    their masks; the model is scored on the sources, on the frames resized and by tiles."""
    try:
        from test_serving import build_test_model_dir
    except ImportError:  # pragma: no cover - run from the repository root
        from tests.test_serving import build_test_model_dir
    import numpy as np
    import tiles

    from casting.data import load_dataset
    from casting.evaluation import load_image

    model_dir = build_test_model_dir(tmp_path_factory)
    work = tmp_path_factory.mktemp("tiles")
    folder = _synthetic(work / "data", count=5, seed=4)
    ds = load_dataset(folder)
    frames = tiles.make_frames(ds, 2, str(work / "frames"))
    assert len(frames.records) == 1  # the fifth image is left out
    frame = frames.records[0]
    assert (frame.height, frame.width) == (128, 128)
    pixels = load_image(frame.image_path)
    for k, rec in enumerate(ds.records[:4]):
        y, x = (k // 2) * 64, (k % 2) * 64
        np.testing.assert_array_equal(pixels[y:y + 64, x:x + 64], load_image(rec.image_path))
    sources = [(i.class_id, i.area) for r in ds.records[:4] for i in r.instances]
    assert [(i.class_id, i.area) for i in frame.instances] == sources  # same pixels each

    out = work / "tiles.json"
    assert tiles.main(["--model", model_dir, "--synthetic", "4", "--grid", "2", "--tile",
                       "overlap=16", "--work", str(work / "run"), "--out", str(out)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("tiles way=")]
    assert [ln.split()[1] for ln in lines] == ["way=native", "way=resize", "way=tiles"]
    result = json.loads(out.read_text())
    assert result["frames"] == 1 and result["frame_size"] == [128, 128]
    assert set(result["results"]) == {"native", "resize", "tiles"}
    from casting.inputs import ParameterError

    with pytest.raises(ParameterError, match="overlap"):
        tiles.main(["--model", model_dir, "--synthetic", "4", "--tile", "overlap=-3"])
