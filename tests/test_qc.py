"""The acceptance policy and the verdict (casting.qc): rules on hand-made detections."""

from __future__ import annotations

import json

import numpy as np
import pytest

from casting.data.records import Instance, Record
from casting.qc import PolicyError, judge, load_policy, parse_policy, part_evaluation, part_truth
from casting.qc.report import report_csv
from casting.qc.verdict import part_depth

NAMES = ("disk", "holes", "chipping", "deburring")
H = W = 100


def disk_mask(cy=50, cx=50, r=40, hole=0):
    yy, xx = np.mgrid[:H, :W]
    d = np.hypot(yy + 0.5 - cy, xx + 0.5 - cx)
    return (d <= r) & (d >= hole)


def square(y, x, side):
    m = np.zeros((H, W), bool)
    m[y:y + side, x:x + side] = True
    return m


def dets(*items):
    """(class name, score, mask) triples -> (class_ids, scores, masks)."""
    ids = [NAMES.index(n) + 1 for n, _, _ in items]
    scores = [s for _, s, _ in items]
    masks = np.stack([m for _, _, m in items]) if items else np.zeros((0, H, W), bool)
    return ids, scores, masks


PART = ("disk", 0.9, disk_mask())


def test_default_policy_rejects_any_defect_at_half_score_inclusive():
    policy = load_policy(None, NAMES)
    assert policy.part_class == "disk" and policy.require_part
    assert judge(policy, *dets(PART)).verdict == "accept"
    at = judge(policy, *dets(PART, ("holes", 0.5, square(40, 40, 5))))
    assert at.verdict == "reject" and at.defects == {"holes": 1, "chipping": 0, "deburring": 0}
    (reason,) = at.reasons
    assert reason["class_name"] == "holes" and reason["detections"] == [1]
    assert "1 holes" in reason["message"] and "0 allowed" in reason["message"]
    below = judge(policy, *dets(PART, ("holes", float(np.nextafter(0.5, 0)), square(40, 40, 5))))
    assert below.verdict == "accept"


def test_no_part_rejects_unless_not_required():
    policy = load_policy(None, NAMES)
    v = judge(policy, *dets())
    assert v.verdict == "reject" and v.reasons[0]["rule"] == "require_part"
    assert not v.part_found and "no disk found" in v.summary()
    weak_part = judge(policy, *dets(("disk", 0.49, disk_mask())))
    assert weak_part.rejected
    relaxed = load_policy({"require_part": False}, NAMES)
    assert judge(relaxed, *dets()).verdict == "accept"


def test_area_and_count_thresholds_are_inclusive():
    policy = load_policy({"classes": {"chipping": {"min_area_px": 25, "max_count": 1}}}, NAMES)
    chip = ("chipping", 0.8, square(20, 20, 5))  # 25 px: counted
    small = ("chipping", 0.8, square(60, 60, 4))  # 16 px: not counted
    assert judge(policy, *dets(PART, chip)).verdict == "accept"  # 1 <= max_count 1
    assert judge(policy, *dets(PART, chip, small)).verdict == "accept"
    v = judge(policy, *dets(PART, chip, ("chipping", 0.8, square(60, 60, 6))))
    assert v.rejected and v.reasons[0]["count"] == 2 and v.reasons[0]["detections"] == [1, 2]
    assert v.largest_area_px["chipping"] == 36


def test_several_rules_per_class_and_ignored_class():
    doc = {"classes": {"chipping": [{"min_area_px": 30, "max_count": 0}, {"max_count": 2}],
                       "holes": []}}
    policy = load_policy(json.dumps(doc), NAMES)
    few_small = [("chipping", 0.9, square(10 * k, 5, 4)) for k in range(1, 3)]
    assert judge(policy, *dets(PART, *few_small)).verdict == "accept"
    big = judge(policy, *dets(PART, ("chipping", 0.9, square(50, 50, 6))))
    assert big.rejected and big.reasons[0]["rule"] == 0
    many = judge(policy, *dets(PART, *few_small, ("chipping", 0.9, square(80, 80, 3))))
    assert many.rejected and [r["rule"] for r in many.reasons] == [1]
    assert judge(policy, *dets(PART, ("holes", 0.99, square(50, 50, 9)))).verdict == "accept"


def test_zone_rim_counts_edge_defects_only():
    depth = part_depth(disk_mask(hole=10))  # the central hole is filled: depth keeps growing
    assert depth[50, 50] > 35 and depth[50, 10] < 2 and depth[50, 5] < 0
    doc = {"classes": {"deburring": {"zone": "rim"}},
           "zones": {"rim": {"unit": "radius", "min_depth": -0.5, "max_depth": 0.15}}}
    policy = load_policy(doc, NAMES)
    part = ("disk", 0.9, disk_mask(hole=10))
    on_rim = ("deburring", 0.9, square(47, 8, 5))      # at the left edge (depth < 6 px)
    centre = ("deburring", 0.9, square(30, 45, 5))     # deep inside the part
    assert judge(policy, *dets(part, centre)).verdict == "accept"
    v = judge(policy, *dets(part, on_rim))
    assert v.rejected and "in zone 'rim'" in v.reasons[0]["message"]
    # a zone in mm at 2 px/mm: the band 0..3 mm is 0..6 px deep
    mm = load_policy({"pixels_per_mm": 2.0, "classes": {"deburring": {"zone": "z"}},
                      "zones": {"z": {"unit": "mm", "min_depth": 0, "max_depth": 3}}}, NAMES)
    assert judge(mm, *dets(part, on_rim)).rejected
    assert not judge(mm, *dets(part, centre)).rejected


def test_mm2_areas_use_the_scale():
    policy = load_policy({"pixels_per_mm": 2.0, "default": {"min_area_mm2": 9}}, NAMES)
    assert policy.rules[0].min_area_px == 36
    assert not judge(policy, *dets(PART, ("holes", 0.9, square(40, 40, 5)))).rejected
    assert judge(policy, *dets(PART, ("holes", 0.9, square(40, 40, 6)))).rejected


@pytest.mark.parametrize("doc, needle", [
    ({"classes": {"rust": {}}}, "classes.rust: not a class"),
    ({"classes": {"disk": {}}}, "is the part_class"),
    ({"default": {"min_score": 1.5}}, "default.min_score must be a number in [0, 1]"),
    ({"default": {"max_count": 1.5}}, "max_count must be an integer"),
    ({"default": {"min_area_mm2": 3}}, "needs \"pixels_per_mm\""),
    ({"classes": {"holes": {"zone": "rim"}}}, "zone 'rim' is not defined"),
    ({"zones": {"rim": {"unit": "inch"}}}, "unit must be one of"),
    ({"zones": {"rim": {"min_depth": 5, "max_depth": 1}}}, "min_depth 5 > max_depth 1"),
    ({"part_class": "wheel"}, "part_class 'wheel' is not a class"),
    ({"part_class": None, "require_part": True}, "require_part needs a part_class"),
    ({"threshold": 0.5}, "unknown key(s) ['threshold']"),
    ({"classes": {"holes": {"min_scor": 0.5}}}, "unknown key(s) ['min_scor'] in classes.holes"),
])
def test_bad_policies_say_what_to_fix(doc, needle):
    with pytest.raises(PolicyError) as err:
        parse_policy(doc, NAMES, "p.json")
    assert str(err.value).startswith("p.json: ") and needle in str(err.value)


def test_policy_files_and_inline_text(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"default": {"min_score": 0.7}}))
    assert load_policy(str(path), NAMES).rules[0].min_score == 0.7
    assert load_policy(' {"default": {"min_score": 0.6}}', NAMES).rules[0].min_score == 0.6
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PolicyError, match="bad.json: not valid JSON"):
        load_policy(str(bad), NAMES)
    with pytest.raises(PolicyError, match="missing.json: cannot read the policy file"):
        load_policy(str(tmp_path / "missing.json"), NAMES)
    # a policy travels as its document: written out and read back, it is the same policy
    policy = load_policy({"default": {"min_score": 0.6}, "classes": {"holes": []}}, NAMES)
    (tmp_path / "again.json").write_text(policy.to_json())
    again = load_policy(str(tmp_path / "again.json"), NAMES)
    assert again.rules == policy.rules


def test_part_truth_prefers_tags_then_annotations():
    defect = Instance(2, square(10, 10, 3))
    disk = Instance(1, disk_mask())
    assert part_truth(Record("a", "a.jpg", H, W, [disk], tags=("good", "reviewd")),
                      NAMES, "disk") == (False, "tag")
    assert part_truth(Record("b", "b.jpg", H, W, [disk], tags=("Bad",)), NAMES, "disk") == (True, "tag")
    assert part_truth(Record("c", "c.jpg", H, W, [disk, defect]), NAMES, "disk") == (True, "annotations")
    assert part_truth(Record("d", "d.jpg", H, W, [disk]), NAMES, "disk") == (False, "annotations")


def test_part_evaluation_by_hand():
    """4 parts: 2 defective (one caught), 2 good (one rejected by a weak false defect)."""
    disk = Instance(1, disk_mask())
    records = [Record(f"r{i}", f"r{i}.jpg", H, W, [disk], tags=(tag,))
               for i, tag in enumerate(("bad", "bad", "good", "good"))]
    part = ("disk", 0.95, disk_mask())

    def d(*items):
        ids, scores, masks = dets(*items)
        return {"class_ids": ids, "scores": scores, "masks": masks}

    detections = [d(part, ("holes", 0.9, square(40, 40, 5))),   # bad, caught
                  d(part, ("holes", 0.3, square(40, 40, 5))),   # bad, missed at 0.5
                  d(part),                                      # good, accepted
                  d(part, ("chipping", 0.6, square(20, 20, 4)))]  # good, rejected at 0.5
    out = part_evaluation(records, detections, load_policy(None, NAMES),
                          thresholds=(0.25, 0.5, 0.75))
    assert (out["num_defective"], out["num_good"], out["truth_from_tags"]) == (2, 2, 4)
    assert out["catch_rate"] == 0.5 and out["false_reject_rate"] == 0.5
    assert out["missed"] == ["r1"] and out["falsely_rejected"] == ["r3"]
    curve = {c["min_score"]: (c["catch_rate"], c["false_reject_rate"]) for c in out["curve"]}
    assert curve == {0.25: (1.0, 0.5), 0.5: (0.5, 0.5), 0.75: (0.5, 0.0)}


def test_report_csv_rows():
    policy = load_policy(None, NAMES)
    v1 = judge(policy, *dets(PART))
    v2 = judge(policy, *dets(PART, ("chipping", 0.9, square(20, 20, 4)),
                             ("holes", 0.9, square(60, 60, 6))))
    lines = report_csv([("a.jpg", v1), ("b.jpg", v2)], NAMES[1:]).splitlines()
    assert lines[0] == ("file_name,verdict,holes_count,chipping_count,deburring_count,"
                        "largest_area_px,largest_class,reasons")
    assert lines[1] == "a.jpg,accept,0,0,0,0,,"
    assert lines[2].startswith("b.jpg,reject,1,1,0,36,holes,")
    assert "1 holes (score >= 0.5) > 0 allowed" in lines[2]
