"""The 'Metrics' sub-section: test metrics with their intervals, cross-validation means, each
fold's metrics, and the comparison tables (:mod:`mritumor.report.comparison`)."""

from __future__ import annotations

from collections.abc import Mapping

from mritumor import runfiles
from mritumor.report.comparison import comparison_part
from mritumor.report.folder import Folder
from mritumor.report.html import DASH, fmt, fmt_interval, fmt_mean_sd, is_interval, is_number, table
from mritumor.report.page import note


def metric_rows(metrics: Mapping) -> tuple[list[tuple[str, str]], list[str]]:
    """(metric, 'value (low–high)') rows of a test_metrics.json, and its text entries."""
    rows, texts = [], []
    for key, value in metrics.items():
        if key == "per_source" and isinstance(value, Mapping):
            rows.extend(source_rows(value))
        elif is_interval(value):
            rows.append((key, fmt_interval(value)))
        elif isinstance(value, Mapping) and value and all(is_interval(v) for v in value.values()):
            rows.extend((f"{key} · {sub}", fmt_interval(v)) for sub, v in value.items())
        elif is_number(value) or isinstance(value, bool):
            rows.append((key, fmt(value)))
        elif isinstance(value, str) and key != "variant":
            texts.append(f"{key}: {value}")
        elif value is None:
            rows.append((key, DASH))
    return rows, texts


def source_rows(per_source: Mapping) -> list[tuple[str, str]]:
    """('source NAME · metric', value) rows of a multi-source run's per-source metrics."""
    rows = []
    for source, entry in per_source.items():
        for name, value in (entry if isinstance(entry, Mapping) else {}).items():
            if is_interval(value):
                rows.append((f"source {source} · {name}", fmt_interval(value)))
            elif is_number(value):
                rows.append((f"source {source} · {name}", fmt(value)))
    return rows


def metrics_part(folder: Folder, children: list[Folder], level: int) -> str:
    """The sub-section's body; ``level``: the heading level of its own headings."""
    parts = []
    metrics = folder.json(runfiles.TEST_METRICS)
    if isinstance(metrics, Mapping):
        rows, texts = metric_rows(metrics)
        parts.append(
            table(["metric", "value (95 % CI)"], rows, css="metrics")
            + "".join(note(t) for t in texts)
            + '<p class="meta">Intervals: 95 % percentile bootstrap over test patients '
            "(<code>test_metrics.json</code>).</p>"
        )
    cv = folder.json(runfiles.CV_SUMMARY)
    if isinstance(cv, Mapping):
        parts.append(cv_part(cv))
    folds = [c for c in children if c.path.name.startswith("fold_")]
    if folds:
        parts.append(per_fold_part(folds))
    parts.append(comparison_part(folder, level))
    return "".join(parts)


def cv_part(cv: Mapping) -> str:
    rows = []
    for key, entry in cv.items():
        if not isinstance(entry, Mapping) or "mean" not in entry:
            continue
        if key.endswith("/value"):
            name = key[: -len("/value")]
        elif "/" in key:
            continue
        else:
            name = key
        rows.append((name, fmt_mean_sd(entry), fmt(entry.get("n_folds"))))
    return (
        "<p>Over the folds (<code>cv_summary.json</code>): mean ± sample SD of each fold's "
        "point estimate.</p>" + table(["metric", "mean ± SD", "folds"], rows, css="metrics")
    )


def per_fold_part(folds: list[Folder]) -> str:
    per_fold = [(f.path.name, f.json(runfiles.TEST_METRICS)) for f in folds]
    per_fold = [(name, m) for name, m in per_fold if isinstance(m, Mapping)]
    if not per_fold:
        return note("no fold has written test_metrics.json yet")
    names: list[str] = []
    for _, metrics in per_fold:
        names += [k for k, v in metrics.items() if is_interval(v) and k not in names]
    rows = [[name] + [fmt_interval(m.get(name)) for _, m in per_fold] for name in names]
    header = ["metric", *(name for name, _ in per_fold)]
    return (
        "<p>Each fold's test metrics (95 % CI):</p><div class='scroll'>"
        + table(header, rows, css="metrics")
        + "</div>"
    )
