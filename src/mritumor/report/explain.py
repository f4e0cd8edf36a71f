"""The attribution run of ``mritumor explain`` (``attribution_summary.json``)."""

from __future__ import annotations

from collections.abc import Mapping

from mritumor.report.html import json_block, kv


def explain_part(summary: Mapping) -> str:
    items = [
        (k, summary.get(k))
        for k in ("checkpoint", "task", "data_root", "n_patients", "n_explained_slices")
        if k in summary
    ]
    if summary.get("classes"):
        items.append(("classes", ", ".join(map(str, summary["classes"]))))
    parts = [f"<p>Attribution run (<code>attribution_summary.json</code>):</p>{kv(items)}"]
    for key, title in (
        ("settings", "Settings"),
        ("attribution", "Attribution scores"),
        ("slice_importance", "Slice importance"),
        ("patients", "Patients"),
    ):
        if summary.get(key) is not None:
            parts.append(f"<p><strong>{title}</strong></p>{json_block(summary[key])}")
    known = {"checkpoint", "task", "data_root", "n_patients", "n_explained_slices", "classes",
             "settings", "attribution", "slice_importance", "patients"}  # fmt: skip
    rest = {k: v for k, v in summary.items() if k not in known}
    if rest:
        parts.append(f"<p><strong>Other entries</strong></p>{json_block(rest)}")
    return "".join(parts)
