"""Comparison tables: ``mritumor compare`` (``comparison.json`` and ``comparison.csv``) and
``train-multitask --variant all`` (``comparison.csv``). Both commands also write a
``comparison.md`` for people; the report renders from the data files, not from that text."""

from __future__ import annotations

from collections.abc import Mapping

from mritumor import runfiles
from mritumor.report.folder import Folder
from mritumor.report.html import DASH, esc, fmt, fmt_interval, is_number, parse_float, table
from mritumor.report.page import note

# the columns of evaluation.multitask.write_comparison's comparison.csv, as its Markdown names them
VARIANT_HEADER = [
    "Model",
    "Seg. Dice (95 % CI)",
    "Classification accuracy (95 % CI)",
    "seed Dice",
    "seed accuracy",
]
PAIRWISE_HEADER = ["A", "B", "metric", "A", "B", "A − B (CI)", "test", "p", "p (Holm)"]


def comparison_part(folder: Folder, level: int) -> str:
    """The folder's comparison, if it holds one; ``level``: the level of its headings."""
    report = folder.json(runfiles.COMPARISON_JSON)
    if isinstance(report, Mapping):
        return compare_part(report, folder.rows(runfiles.COMPARISON_CSV), level)
    rows = folder.rows(runfiles.COMPARISON_CSV)
    if rows is None:
        return ""
    if rows and "variant" not in rows[0]:
        return note("comparison.csv has no 'variant' column: not a train-multitask table")
    return variants_part(rows)


# ----------------------------------------------------------------------------- --variant all


def variants_part(rows: list[dict[str, str]]) -> str:
    body = [
        (
            f"{row.get('model') or '?'} ({row.get('variant')})",
            _interval(row, "dice"),
            _interval(row, "accuracy"),
            _seed_number(row.get("seed_dice")),
            _seed_number(row.get("seed_accuracy")),
        )
        for row in rows
    ]
    return table(VARIANT_HEADER, body) + (
        '<p class="meta">From <code>comparison.csv</code>: test Dice and tumour-type accuracy '
        "with 95 % intervals over patients, beside the seed's published numbers.</p>"
    )


def _interval(row: Mapping[str, str], name: str) -> str:
    return fmt_interval(
        {
            "value": parse_float(row.get(name)),
            "low": parse_float(row.get(f"{name}_low")),
            "high": parse_float(row.get(f"{name}_high")),
        }
    )


def _seed_number(text: str | None) -> str:
    value = parse_float(text)
    return DASH if value is None else f"{value:.4f}"  # the seed's table has four decimals


# ----------------------------------------------------------------------------- mritumor compare


def compare_summary(report: Mapping) -> str:
    alpha = report.get("alpha")
    ci = f" ({round(100 * (1 - alpha))} % CI)" if is_number(alpha) else ""
    rows = [
        (
            name,
            fmt_interval(e.get("accuracy")),
            fmt_interval(e.get("macro_auc")),
            fmt_interval(e.get("mean_dice")),
        )
        for name, e in (report.get("summary") or {}).items()
        if isinstance(e, Mapping)
    ]
    header = ["run", f"accuracy{ci}", f"macro AUC{ci}", f"mean Dice{ci}"]
    return table(header, rows, css="metrics")


def compare_part(report: Mapping, rows: list[dict[str, str]] | None, level: int) -> str:
    """What ``comparison.md`` says, from ``comparison.json`` and, for the pairwise table, the
    ``comparison.csv`` rows (one per pair × metric; the Friedman rows are left to the JSON)."""
    tag = f"h{min(level, 6)}"

    def heading(text: str) -> str:
        return f"<{tag}>{esc(text)}</{tag}>"

    parts = [f"<p>{html}</p>" for html in _pairing(report)]
    parts += [heading("Runs"), compare_summary(report)]
    pairs = [row for row in rows or [] if row.get("run_a") != "all"]
    if pairs:
        parts += [heading("Pairwise comparisons (A − B)"), pairwise_table(pairs)]
        parts.append(
            "<p><code>*</code>: Holm-adjusted p &lt; alpha (Holm over the pairs, per metric and "
            "class).</p>"
        )
    elif rows is None and report.get("pairwise"):
        parts.append(note("comparison.csv is missing: the pairwise table is not shown"))
    tests = report.get("tests")
    if isinstance(tests, Mapping) and tests:
        parts.append(f"<p>Tests: {esc('; '.join(map(str, tests.values())))}.</p>")
    parts += [f"<p>Note: {esc(text)}</p>" for text in report.get("notes") or []]
    for metric, result in (report.get("friedman") or {}).items():
        if isinstance(result, Mapping):
            parts += [heading(f"Friedman test ({metric})"), f"<p>{esc(_friedman(result))}</p>"]
    skipped = [
        f"<li>{esc(s.get('run'))}: not in the {esc(test)} comparison ({esc(s.get('reason'))})</li>"
        for test, items in (report.get("skipped") or {}).items()
        for s in items or []
        if isinstance(s, Mapping)
    ]
    if skipped:
        parts += [heading("Skipped"), "<ul>" + "".join(skipped) + "</ul>"]
    sources = "<code>comparison.json</code>" + (" and <code>comparison.csv</code>" if pairs else "")
    parts.append(f'<p class="meta">From {sources}.</p>')
    return "".join(parts)


def _text(value) -> str:
    return DASH if value is None else str(value)


def _pairing(report: Mapping) -> list[str]:
    """The paragraphs (HTML) on what was paired, how intervals were made, any aggregation."""
    texts = []
    if "unit" in report:
        text = f"Unit of pairing: <code>{esc(report['unit'])}</code>; " + esc(
            f"{_text(report.get('n_units'))} units shared by every run "
            f"({_text(report.get('n_units_known_type'))} with a known type), "
            f"{_text(report.get('n_patients'))} patients."
        )
        dropped = report.get("dropped_units")
        if isinstance(dropped, Mapping):
            per_run = ", ".join(f"{k}: {v}" for k, v in (dropped.get("per_run") or {}).items())
            text += esc(
                f" {_text(dropped.get('total'))} of {_text(dropped.get('n_units_union'))} units "
                f"dropped because not every run has them (per run: {per_run})."
            )
        texts.append(text)
    if "bootstrap" in report:
        texts.append(
            esc(
                f"Intervals: {report['bootstrap']}. Seed {_text(report.get('seed'))}, "
                f"alpha {_text(report.get('alpha'))}."
            )
        )
    if report.get("aggregation"):
        texts.append(esc(f"Aggregation: {report['aggregation']}."))
    return texts


def pairwise_table(rows: list[dict[str, str]]) -> str:
    body = []
    for row in rows:
        difference = fmt(parse_float(row.get("difference")))
        low, high = parse_float(row.get("ci_low")), parse_float(row.get("ci_high"))
        if low is not None and high is not None:
            difference += f" ({fmt(low)} to {fmt(high)})"
        test = row.get("test") or ""
        mark = " *" if row.get("significant") == "True" else ""
        body.append(
            (
                row.get("run_a"),
                row.get("run_b"),
                row.get("metric"),
                fmt(parse_float(row.get("value_a"))),
                fmt(parse_float(row.get("value_b"))),
                difference,
                test.split(" (")[0] or DASH,  # the full names are in the tests paragraph
                fmt(parse_float(row.get("p_value"))),
                fmt(parse_float(row.get("p_holm"))) + mark,
            )
        )
    return table(PAIRWISE_HEADER, body)


def _friedman(result: Mapping) -> str:
    ranks = ", ".join(
        f"{name} {rank:.2f}" if is_number(rank) else f"{name} {DASH}"
        for name, rank in zip(
            result.get("runs") or [], result.get("mean_ranks") or [], strict=False
        )
    )
    return (
        f"{_text(result.get('test'))}: chi² = {fmt(result.get('statistic'))}, "
        f"p = {fmt(result.get('p_value'))}, {_text(result.get('n_blocks'))} patients "
        f"({_text(result.get('n_blocks_dropped'))} dropped for missing values); mean ranks: "
        f"{ranks}. Post-hoc: {_text(result.get('post_hoc'))}."
    )


def compare_runs_part(folder: Folder) -> str:
    report = folder.json(runfiles.COMPARISON_JSON)
    if not isinstance(report, Mapping) or not report.get("runs"):
        return ""
    rows = [
        (r.get("name"), r.get("path"), fmt(r.get("n_rows")), fmt(r.get("classification")),
         fmt(r.get("dice")), fmt(r.get("units_dropped")))
        for r in report["runs"]
        if isinstance(r, Mapping)
    ]  # fmt: skip
    return "<p>Compared runs (<code>comparison.json</code>):</p>" + table(
        ["run", "folder", "rows", "classification", "Dice", "units dropped"], rows
    )
