"""The 'Segmentation examples' sub-section: slice counts and each test patient's Dice."""

from __future__ import annotations

from collections.abc import Mapping

from mritumor.report.html import fmt, kv, table


def segmentation_part(report: Mapping | None) -> str:
    seg = report.get("segmentation") if isinstance(report, Mapping) else None
    if not isinstance(seg, Mapping):
        return ""
    items = [
        (k, seg[k])
        for k in (
            "n_slices_with_mask",
            "n_tumour_slices",
            "n_tumour_free_slices",
            "hd95_undefined_slices",
            "convention",
        )
        if k in seg
    ]
    html = kv(items)
    per_patient = seg.get("per_patient_dice")
    if isinstance(per_patient, Mapping) and per_patient:
        rows = sorted(
            per_patient.items(),
            key=lambda item: (item[1] is None, item[1] if item[1] is not None else 0),
        )
        html += (
            f"<details><summary>Dice per test patient ({len(rows)}, worst first)</summary>"
            + table(["patient", "mean Dice"], [(p, fmt(v)) for p, v in rows])
            + "</details>"
        )
    return html
