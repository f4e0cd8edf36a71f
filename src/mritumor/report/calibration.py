"""The 'Calibration' sub-section: ECE and MCE before and after temperature scaling."""

from __future__ import annotations

from collections.abc import Mapping

from mritumor.report.folder import Folder
from mritumor.report.html import fmt, is_number, table


def calibration_part(folder: Folder, report: Mapping | None, metrics: Mapping | None) -> str:
    calibration = report.get("calibration") if isinstance(report, Mapping) else None
    rows = []
    if isinstance(calibration, Mapping):
        before, after = (
            calibration.get("before_scaling") or {},
            calibration.get("after_scaling") or {},
        )
        for key, label in (
            ("ece", "expected calibration error (ECE)"),
            ("mce", "maximum calibration error (MCE)"),
        ):
            if key in before or key in after:
                rows.append((label, fmt(before.get(key)), fmt(after.get(key))))
    elif isinstance(metrics, Mapping) and "ece_before_scaling" in metrics:
        rows.append(
            ("ECE", fmt(metrics.get("ece_before_scaling")), fmt(metrics.get("ece_after_scaling")))
        )
    temperature = (report or {}).get("temperature", (metrics or {}).get("temperature"))
    html = ""
    if rows:
        after = "after scaling" + (f" (T = {fmt(temperature)})" if is_number(temperature) else "")
        html += table(["", "before scaling (T = 1)", after], rows)
    return html
