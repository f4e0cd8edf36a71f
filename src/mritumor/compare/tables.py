"""The report as tables: ``comparison.csv`` rows, Markdown and the terminal summary."""

from __future__ import annotations

import pandas as pd

CSV_COLUMNS = [
    "run_a",
    "run_b",
    "metric",
    "value_a",
    "value_b",
    "difference",
    "ci_low",
    "ci_high",
    "test",
    "statistic",
    "p_value",
    "p_holm",
    "significant",
    "n",
]


def _pairwise_rows(report: dict):
    """(run_a, run_b, metric name, entry) for every pairwise test in the report."""
    for pair in report["pairwise"]:
        for metric in ("accuracy", "macro_auc"):
            if metric in pair:
                yield pair["run_a"], pair["run_b"], metric, pair[metric]
        for c, entry in pair.get("auc_per_class", {}).items():
            yield pair["run_a"], pair["run_b"], f"auc[{c}]", entry
        if "dice" in pair:
            yield pair["run_a"], pair["run_b"], "mean_dice", pair["dice"]


def csv_rows(report: dict) -> pd.DataFrame:
    """One row per pair × metric, then one per Friedman test (run_a = 'all')."""
    rows = [
        {
            "run_a": a,
            "run_b": b,
            "metric": metric,
            "value_a": e.get("a"),
            "value_b": e.get("b"),
            "difference": e.get("difference"),
            "ci_low": e.get("ci_low"),
            "ci_high": e.get("ci_high"),
            "test": e.get("test"),
            "statistic": e.get("statistic"),
            "p_value": e.get("p_value"),
            "p_holm": e.get("p_holm"),
            "significant": e.get("significant"),
            "n": e.get("n"),
        }
        for a, b, metric, e in _pairwise_rows(report)
    ]
    for metric, result in report["friedman"].items():
        if result:
            rows.append(
                {
                    "run_a": "all",
                    "run_b": "",
                    "metric": f"friedman_{metric}",
                    "test": result["test"],
                    "statistic": result["statistic"],
                    "p_value": result["p_value"],
                    "significant": None
                    if result["p_value"] is None
                    else result["p_value"] < report["alpha"],
                    "n": result["n_blocks"],
                }
            )
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _fmt_p(value) -> str:
    """p-values keep three significant digits when small (2.1e-05, not 0.000)."""
    if isinstance(value, float) and 0 < abs(value) < 1e-3:
        return f"{value:.3g}"
    return _fmt(value)


def _fmt_interval(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    return f"{_fmt(entry['value'])} ({_fmt(entry['low'])}–{_fmt(entry['high'])})"


def summary_table(report: dict) -> list[str]:
    """Markdown rows: each run's accuracy, macro AUC and mean Dice with intervals."""
    level = round(100 * (1 - report["alpha"]))
    lines = [
        f"| run | accuracy ({level} % CI) | macro AUC ({level} % CI) | mean Dice ({level} % CI) |",
        "| --- | --- | --- | --- |",
    ]
    for name, entry in report["summary"].items():
        lines.append(
            f"| {name} | {_fmt_interval(entry.get('accuracy'))} | "
            f"{_fmt_interval(entry.get('macro_auc'))} | {_fmt_interval(entry.get('mean_dice'))} |"
        )
    return lines


def _short_test(test: str | None) -> str:
    """'exact McNemar (two-sided …)' → 'exact McNemar'; the full names are in the JSON/CSV."""
    return "–" if not test else test.split(" (")[0]


def pairwise_table(report: dict) -> list[str]:
    """Markdown rows: every pairwise difference with its interval, test and p-values."""
    lines = [
        "| A | B | metric | A | B | A − B (CI) | test | p | p (Holm) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a, b, metric, e in _pairwise_rows(report):
        difference = _fmt(e.get("difference"))
        if e.get("ci_low") is not None:
            difference += f" ({_fmt(e['ci_low'])} to {_fmt(e['ci_high'])})"
        mark = " *" if e.get("significant") else ""
        lines.append(
            f"| {a} | {b} | {metric} | {_fmt(e.get('a'))} | {_fmt(e.get('b'))} | {difference} | "
            f"{_short_test(e.get('test'))} | {_fmt_p(e.get('p_value'))} | "
            f"{_fmt_p(e.get('p_holm'))}{mark} |"
        )
    return lines


def markdown(report: dict) -> str:
    dropped = report["dropped_units"]
    lines = [
        "# Model comparison",
        "",
        f"Unit of pairing: `{report['unit']}`; {report['n_units']} units shared by every run "
        f"({report['n_units_known_type']} with a known type), {report['n_patients']} patients. "
        f"{dropped['total']} of {dropped['n_units_union']} units dropped because not every run "
        f"has them (per run: {', '.join(f'{k}: {v}' for k, v in dropped['per_run'].items())}).",
        "",
        f"Intervals: {report['bootstrap']}. Seed {report['seed']}, alpha {report['alpha']}.",
        "",
    ]
    if report["aggregation"]:
        lines += [f"Aggregation: {report['aggregation']}.", ""]
    lines += ["## Runs", "", *summary_table(report), ""]
    lines += ["## Pairwise comparisons (A − B)", "", *pairwise_table(report), ""]
    lines += ["`*`: Holm-adjusted p < alpha (Holm over the pairs, per metric and class).", ""]
    lines += [f"Tests: {'; '.join(report['tests'].values())}.", ""]
    lines += [f"Note: {note}" for note in report["notes"]] + ([""] if report["notes"] else [])
    for metric, result in report["friedman"].items():
        if result:
            lines += [
                f"## Friedman test ({metric})",
                "",
                f"{result['test']}: chi² = {_fmt(result['statistic'])}, "
                f"p = {_fmt_p(result['p_value'])}, {result['n_blocks']} patients "
                f"({result['n_blocks_dropped']} dropped for missing values); mean ranks: "
                + ", ".join(
                    f"{n} {_fmt(r, 2)}"
                    for n, r in zip(result["runs"], result["mean_ranks"], strict=True)
                )
                + f". Post-hoc: {result['post_hoc']}.",
                "",
            ]
    skipped = [
        f"- {s['run']}: not in the {test} comparison ({s['reason']})"
        for test, items in report["skipped"].items()
        for s in items
    ]
    if skipped:
        lines += ["## Skipped", "", *skipped, ""]
    return "\n".join(lines)


def text_summary(report: dict) -> str:
    """A short plain-text summary for the terminal."""
    lines = [
        f"{report['n_units']} shared {report['unit']} units, {report['n_patients']} patients "
        f"({report['dropped_units']['total']} units dropped)"
    ]
    for name, entry in report["summary"].items():
        parts = [
            f"{label} {_fmt_interval(entry.get(key))}"
            for key, label in (("accuracy", "acc"), ("macro_auc", "AUC"), ("mean_dice", "Dice"))
            if entry.get(key)
        ]
        lines.append(f"  {name}: " + ("; ".join(parts) or "nothing comparable"))
    for a, b, metric, e in _pairwise_rows(report):
        if metric.startswith("auc["):
            continue
        lines.append(
            f"  {a} − {b} {metric}: {_fmt(e.get('difference'))} "
            f"[{_fmt(e.get('ci_low'))}, {_fmt(e.get('ci_high'))}] "
            f"p={_fmt_p(e.get('p_value'))} (Holm {_fmt_p(e.get('p_holm'))})"
        )
    for metric, result in report["friedman"].items():
        if result:
            lines.append(f"  Friedman ({metric}): p={_fmt_p(result['p_value'])}")
    return "\n".join(lines)
