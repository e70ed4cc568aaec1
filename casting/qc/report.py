"""The per-image CSV report: one row per image with its verdict, defects and reasons."""

from __future__ import annotations

import csv
import io
from typing import Sequence

from casting.files import write_atomic
from casting.qc.verdict import Verdict

__all__ = ["report_csv", "write_report_csv"]


def report_csv(rows: Sequence[tuple[str, Verdict]], defect_classes: Sequence[str]) -> str:
    """``file_name, verdict, <class>_count..., largest_area_px, largest_class, reasons``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file_name", "verdict", *[f"{c}_count" for c in defect_classes],
                     "largest_area_px", "largest_class", "reasons"])
    for name, verdict in rows:
        areas = verdict.largest_area_px
        largest = max(areas, key=lambda c: areas[c], default="") if any(areas.values()) else ""
        writer.writerow([name, verdict.verdict,
                         *[verdict.defects.get(c, 0) for c in defect_classes],
                         areas.get(largest, 0) if largest else 0, largest,
                         "; ".join(r["message"] for r in verdict.reasons)])
    return buf.getvalue()


def write_report_csv(path: str, rows: Sequence[tuple[str, Verdict]],
                     defect_classes: Sequence[str]) -> None:
    write_atomic(path, report_csv(rows, defect_classes))
