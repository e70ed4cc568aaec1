"""Quality control: accept or reject each part by rules on the defects found.

* `casting.qc.policy` - the policy JSON (per-class score, area, count and zone rules), checked;
* `casting.qc.verdict` - `judge`: one image's detections -> a `Verdict` with its reasons;
* `casting.qc.parts` - part-level evaluation: defective parts caught, good parts rejected;
* `casting.qc.report` - the CSV report of `python -m casting.predict`.
"""

from casting.qc.parts import part_evaluation, part_truth
from casting.qc.policy import (POLICY_FILE, Policy, PolicyError, Rule, Zone, default_policy,
                               load_policy, parse_policy)
from casting.qc.verdict import Verdict, judge

__all__ = ["POLICY_FILE", "Policy", "PolicyError", "Rule", "Zone", "Verdict", "default_policy",
           "judge", "load_policy", "parse_policy", "part_evaluation", "part_truth"]
