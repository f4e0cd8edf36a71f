"""The 'Per class' and 'Confusion matrices' sub-sections (``test_report.json``)."""

from __future__ import annotations

from collections.abc import Mapping

from mritumor.report.html import esc, fmt, fmt_interval, table
from mritumor.report.page import note


def per_class_part(report: Mapping) -> str:
    parts = []
    for key, title in (
        ("tumor_type", "Tumour type"),
        ("grade_e2e", "End-to-end grade"),
    ):
        section = report.get(key)
        metrics = section.get("metrics") if isinstance(section, Mapping) else None
        per_class = metrics.get("per_class") if isinstance(metrics, Mapping) else None
        if not isinstance(per_class, Mapping) or not per_class:
            continue
        rows = [
            (name, fmt(c.get("precision")), fmt(c.get("recall")), fmt(c.get("f1")), fmt(c.get("auc")),
             fmt(c.get("average_precision")), fmt(c.get("support")))
            for name, c in per_class.items()
        ]  # fmt: skip
        n = metrics.get("n")
        parts.append(
            f"<p><strong>{title}</strong>{f' ({n} test items with a known label)' if n else ''}</p>"
            + table(["class", "precision", "recall", "F1", "AUC", "AP", "support"], rows)
        )
    conditional = report.get("grade_conditional")
    if isinstance(conditional, Mapping) and conditional.get("accuracy") is not None:
        interval = conditional.get("interval") or {}
        entry = {
            "value": conditional["accuracy"],
            "low": interval.get("low"),
            "high": interval.get("high"),
        }
        parts.append(
            f"<p>Grade accuracy under the true type: {esc(fmt_interval(entry))} "
            f"({fmt(conditional.get('n'))} patients).</p>"
        )
    for what, reason in (report.get("skipped") or {}).items():
        parts.append(note(f"{what} skipped: {reason}"))
    return "".join(parts)


def confusion_tables(report: Mapping) -> str:
    parts = []
    for key, title in (("tumor_type", "tumour type"), ("grade_e2e", "end-to-end grade")):
        section = report.get(key)
        metrics = section.get("metrics") if isinstance(section, Mapping) else None
        if not isinstance(metrics, Mapping) or not metrics.get("confusion_matrix"):
            continue
        matrix = metrics["confusion_matrix"]
        names = list((metrics.get("per_class") or {}).keys()) or [
            str(i) for i in range(len(matrix))
        ]
        parts.append(
            confusion_html(matrix, names, f"Counts, {title} (rows: true, columns: predicted)")
        )
    return "".join(parts)


def confusion_html(matrix: list[list[int]], names: list[str], caption: str) -> str:
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>"
    rows = []
    for name, row in zip(names, matrix, strict=False):
        total = sum(row) or 1
        cells = []
        for count in row:
            share = count / total
            colour = f"rgba(36, 88, 166, {0.08 + 0.72 * share:.2f})" if count else "transparent"
            ink = "#fff" if share > 0.55 else "inherit"
            cells.append(f'<td class="num" style="background:{colour};color:{ink}">{count}</td>')
        rows.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}</tr>")
    return (
        f'<p class="meta">{esc(caption)}</p><table class="confusion"><thead>{head}</thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
