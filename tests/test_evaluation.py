"""COCO evaluation from detections + records (pycocotools, real numbers)."""

import json

import numpy as np
import pytest
from PIL import Image

from casting.data.records import Instance, Record
from casting.evaluation import (coco_evaluate, detections_to_coco, evaluate_model,
                                flat_metrics, records_to_coco)
from casting.metrics import METRIC_DEFINITIONS, format_eval_line, parse_metrics

CLASSES = ("disk", "holes", "chipping")


def _mask(h, w, y1, x1, y2, x2):
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


def _records():
    r1 = Record("a", "a.png", 64, 80, instances=[
        Instance(1, _mask(64, 80, 2, 2, 60, 70)),
        Instance(2, _mask(64, 80, 10, 10, 20, 24)),
    ])
    r2 = Record("b", "b.png", 64, 64, instances=[
        Instance(1, _mask(64, 64, 4, 4, 50, 50)),
        Instance(2, _mask(64, 64, 30, 30, 40, 40)),
    ])
    return [r1, r2]


def _perfect(records):
    out = []
    for rec in records:
        boxes, ids, masks = [], [], []
        for inst in rec.instances:
            boxes.append(inst.bbox())
            ids.append(inst.class_id)
            masks.append(inst.mask)
        out.append({"boxes": np.array(boxes, np.float32), "class_ids": np.array(ids, np.int32),
                    "scores": np.full(len(ids), 0.9, np.float32), "masks": np.array(masks)})
    return out


def test_perfect_detections_score_one_and_absent_class_is_none():
    recs = _records()
    gt = records_to_coco(recs, CLASSES)
    assert [a["bbox"] for a in gt["annotations"]][:2] == [[2.0, 2.0, 68.0, 58.0],
                                                          [10.0, 10.0, 14.0, 10.0]]
    result = coco_evaluate(gt, detections_to_coco(_perfect(recs)), CLASSES)
    for kind in ("bbox", "segm"):
        assert result[kind]["AP"] == pytest.approx(1.0)
        assert result[kind]["AP50"] == pytest.approx(1.0)
        assert result[kind]["per_class"]["disk"] == pytest.approx(1.0)
        assert result[kind]["per_class"]["holes"] == pytest.approx(1.0)
        assert result[kind]["per_class"]["chipping"] is None  # no ground truth
        assert result[kind]["AP_small"] == pytest.approx(1.0)  # the 14x10 / 10x10 holes
        assert result[kind]["per_class_AP50"] == {"disk": pytest.approx(1.0),
                                                  "holes": pytest.approx(1.0),
                                                  "chipping": None}
    json.dumps(result)  # serialisable as evaluation.json


def test_wrong_and_missing_detections_lower_ap():
    recs = _records()
    dets = _perfect(recs)
    # image 1: the hole is labelled as chipping; image 2: the hole mask is shifted away
    dets[0]["class_ids"] = np.array([1, 3], np.int32)
    dets[1]["masks"][1] = _mask(64, 64, 50, 50, 60, 60)
    result = coco_evaluate(records_to_coco(recs, CLASSES), detections_to_coco(dets), CLASSES)
    assert result["segm"]["per_class"]["disk"] == pytest.approx(1.0)
    assert result["segm"]["per_class"]["holes"] == pytest.approx(0.0)
    assert result["bbox"]["per_class"]["holes"] == pytest.approx(0.5, abs=0.02)  # one of two boxes
    assert result["segm"]["AP"] < result["bbox"]["AP"] < 1.0
    # AP50 per class: at IoU 0.5 the one correct hole box of two recalls half
    assert result["bbox"]["per_class_AP50"]["holes"] == pytest.approx(0.5, abs=0.02)
    assert result["segm"]["per_class_AP50"]["holes"] == pytest.approx(0.0)
    assert result["segm"]["per_class_AP50"]["disk"] == pytest.approx(1.0)


def test_no_detections_gives_zero_not_crash():
    recs = _records()
    empty = [{"boxes": np.zeros((0, 4)), "class_ids": np.zeros(0, int), "scores": np.zeros(0),
              "masks": np.zeros((0, r.height, r.width), bool)} for r in recs]
    result = coco_evaluate(records_to_coco(recs, CLASSES), detections_to_coco(empty), CLASSES)
    assert result["bbox"]["AP"] == 0.0 and result["segm"]["per_class"]["holes"] == 0.0
    assert result["segm"]["per_class"]["chipping"] is None
    assert result["segm"]["per_class_AP50"] == {"disk": 0.0, "holes": 0.0, "chipping": None}


def test_flat_metrics_feed_the_eval_line_and_metric_regexes():
    recs = _records()
    result = coco_evaluate(records_to_coco(recs, CLASSES), detections_to_coco(_perfect(recs)),
                           CLASSES)
    flat = flat_metrics(result)
    assert flat["segm_AP"] == pytest.approx(1.0)
    assert "segm_AP_large" not in flat or flat["segm_AP_large"] is not None
    line = format_eval_line({"epoch": 3, **flat})
    parsed = parse_metrics("some log\n" + line + "\n", METRIC_DEFINITIONS)
    assert parsed["segm_AP"] == [pytest.approx(1.0)]
    assert parsed["bbox_AP50"] == [pytest.approx(1.0)]
    with_classes = flat_metrics(result, per_class=True)
    assert with_classes["segm_AP_holes"] == pytest.approx(1.0)


class _Oracle:
    """A 'model' whose detect returns the ground truth of the image it is shown."""

    def __init__(self, records):
        self.by_shape = {(r.height, r.width): r for r in records}
        self.calls = 0
        self.thresholds = []

    def detect(self, images, min_confidence=None):
        self.calls += 1
        self.thresholds.append(min_confidence)
        rec = self.by_shape[images[0].shape[:2]]
        return _perfect([rec])


def test_evaluate_model_reads_images_and_stops_on_request(tmp_path):
    recs = _records()
    for rec in recs:
        path = tmp_path / f"{rec.image_id}.png"
        Image.fromarray(np.zeros((rec.height, rec.width, 3), np.uint8)).save(path)
        rec.image_path = str(path)
    oracle = _Oracle(recs)
    metrics, kept = evaluate_model(oracle, recs, CLASSES, keep_images=1)
    assert oracle.calls == 2 and len(kept) == 1 and kept[0][1].shape == (64, 80, 3)
    assert oracle.thresholds == [0.05, 0.05]  # COCO scores detections down to 0.05
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    metrics, _ = evaluate_model(oracle, recs, CLASSES, max_images=1)
    assert metrics["num_images"] == 1
    with pytest.raises(InterruptedError):
        evaluate_model(oracle, recs, CLASSES, should_stop=lambda: True)
