"""The 'Knowing when not to answer' sub-section: conformal sets, selective prediction and the
out-of-distribution threshold, from the run's ``uncertainty.json``."""

from __future__ import annotations

from collections.abc import Mapping

from mritumor import runfiles
from mritumor.report.folder import Folder
from mritumor.report.html import fmt, table


def uncertainty_part(folder: Folder) -> str:
    data = folder.json(runfiles.UNCERTAINTY)
    if not isinstance(data, Mapping):
        return ""
    rows = []
    for key, label in (("conformal", "tumour type"), ("grade_conformal", "end-to-end grade")):
        sets = data.get(key)
        if isinstance(sets, Mapping):
            rows.append(
                (
                    f"{label}: {sets.get('method')}{' Mondrian (per-class)' if sets.get('mondrian') else ''} "
                    f"sets, nominal {fmt(sets.get('nominal_coverage'))}",
                    fmt(sets.get("coverage")),
                    fmt(sets.get("mean_set_size")),
                    fmt(sets.get("singleton_share")),
                    str(sets.get("n")),
                )
            )
    header = ["prediction sets", "coverage", "mean size", "single-class share", "n"]
    html = table(header, rows) if rows else ""
    selective = data.get("selective") or {}
    ood = data.get("ood") or {}
    at = selective.get("accuracy_at") or {}
    html += table(
        ["selective prediction and OOD", "value"],
        [
            ("AURC (lower is better)", fmt(selective.get("aurc"))),
            *((f"accuracy of the {float(c):.0%} most confident", fmt(v)) for c, v in at.items()),
            ("OOD threshold (validation: 95 % kept)", fmt(ood.get("threshold"))),
            ("share of test units flagged out of distribution", fmt(ood.get("flagged_share"))),
        ],
    )
    return html
