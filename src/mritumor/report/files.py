"""What a run wrote: a preview of ``predictions.csv`` and the list of its files."""

from __future__ import annotations

import csv

from mritumor import runfiles
from mritumor.report.folder import Folder, utc_date
from mritumor.report.html import fmt, fmt_bytes, parse_float, table
from mritumor.report.page import note


def predictions_part(folder: Folder, preview_rows: int) -> str:
    path = folder.path / runfiles.PREDICTIONS
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            preview, n_rows, known, agree = [], 0, 0, 0
            true_col = header.index("true_type") if "true_type" in header else None
            pred_col = header.index("pred_type") if "pred_type" in header else None
            for row in reader:
                n_rows += 1
                if len(preview) < preview_rows:
                    preview.append(row)
                if (
                    true_col is not None
                    and pred_col is not None
                    and len(row) > max(true_col, pred_col)
                ):
                    if row[true_col]:
                        known += 1
                        agree += row[true_col] == row[pred_col]
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        return note(f"predictions.csv cannot be read: {error}")
    unit = "slice" if "image" in header and "pred_grade_e2e" not in header else "patient"
    text = f"<p><code>predictions.csv</code>: {n_rows} rows (one per test {unit}), "
    text += f"{len(header)} columns"
    if known:
        text += f"; predicted type = true type in {agree} of {known} rows with a known type"
    text += ".</p>"
    shown = [[_short_cell(c) for c in row] for row in preview]
    return (
        text
        + f"<details><summary>first {len(preview)} rows</summary><div class='scroll'>"
        + table(header, shown, css="small")
        + "</div></details>"
    )


def _short_cell(text: str) -> str:
    value = parse_float(text)
    if value is not None and not text.strip().lstrip("-").isdigit():
        return fmt(value)
    return text if len(text) <= 40 else "…" + text[-39:]


def files_part(folder: Folder) -> str:
    rows = []
    for name in folder.node.files:
        path = folder.path / name
        try:
            stat = path.stat()
        except OSError:
            continue
        extra = " (checkpoint: not opened)" if name.endswith((".pt", ".ckpt")) else ""
        rows.append((name + extra, fmt_bytes(stat.st_size), utc_date(stat.st_mtime)))
    if not rows:
        return ""
    return (
        f"<details><summary>{len(rows)} file{'s' * (len(rows) != 1)} in this folder</summary>"
        + table(["file", "size", "modified"], rows, css="small")
        + "</details>"
    )
