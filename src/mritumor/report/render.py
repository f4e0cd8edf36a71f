"""The sections of the report: one per run folder, nested like the folders."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from mritumor import __version__
from mritumor.report.html import (
    DASH,
    IMAGE_TYPES,
    data_uri,
    esc,
    figure,
    fmt,
    fmt_bytes,
    fmt_interval,
    fmt_mean_sd,
    is_interval,
    is_number,
    json_block,
    key_value_table,
    line_chart,
    markdown,
    png_size,
    table,
)
from mritumor.report.scan import SKIP_DIRS, RunFolder, natural_key

MB = 1024 * 1024
VARIANT_FOLDERS = tuple("ABCDEFG")

# Known figures: (file, caption); the order is the order on the page.
CURVES = [
    ("roc_tumor_type_ovr.png", "Tumour type: one-vs-rest ROC"),
    ("pr_tumor_type_ovr.png", "Tumour type: one-vs-rest precision–recall"),
    ("roc_grade_e2e_ovr.png", "End-to-end grade: one-vs-rest ROC"),
    ("pr_grade_e2e_ovr.png", "End-to-end grade: one-vs-rest precision–recall"),
    ("roc_overlay.png", "ROC curves of the compared runs"),
    ("dice_per_patient_boxplot.png", "Per-patient Dice of the compared runs"),
    ("ssl_embedding_pca.png", "Frozen embeddings, 2-D PCA (○ train, × test)"),
]
CONFUSION = [
    ("confusion_tumor_type.png", "Confusion matrix, tumour type (rows: true)"),
    ("confusion_grade_e2e.png", "Confusion matrix, end-to-end grade (rows: true)"),
]
CALIBRATION = [("reliability_tumor_type.png", "Reliability diagram, tumour type")]
OVERLAYS = [("overlays.png", "Test slices: reference mask green, prediction red")]
KNOWN_FIGURES = {name for group in (CURVES, CONFUSION, CALIBRATION, OVERLAYS) for name, _ in group}
NOT_FIGURE_DIRS = SKIP_DIRS | {"data"}


@dataclass
class Options:
    max_image_bytes: int = 5 * MB  # one image larger than this is left out, with a note
    max_total_bytes: int = 80 * MB  # images stop being embedded past this, with a note
    max_gallery: int = 24  # 'other figures' per run folder
    preview_rows: int = 8  # rows of predictions.csv shown
    title: str = "mritumor report"


@dataclass
class TocEntry:
    number: str
    title: str
    kind: str
    anchor: str
    depth: int


@dataclass
class Page:
    options: Options
    toc: list[TocEntry] = field(default_factory=list)
    embedded_bytes: int = 0
    n_images: int = 0
    skipped_images: list[str] = field(default_factory=list)

    def image(self, path: Path, caption: str, name: str, wide: bool = False) -> str:
        """The image as a figure with a data URI, or a note saying why it is not there."""
        try:
            size = path.stat().st_size
        except OSError as error:
            return note(f"{name}: cannot be read ({error})")
        if size > self.options.max_image_bytes:
            self.skipped_images.append(str(path))
            return note(
                f"{name} ({fmt_bytes(size)}) is larger than "
                f"{fmt_bytes(self.options.max_image_bytes)}: not embedded; open it beside the run"
            )
        if self.embedded_bytes + size > self.options.max_total_bytes:
            self.skipped_images.append(str(path))
            return note(
                f"{name}: not embedded, the report already holds "
                f"{fmt_bytes(self.embedded_bytes)} of images"
            )
        try:
            data = path.read_bytes()
        except OSError as error:
            return note(f"{name}: cannot be read ({error})")
        self.embedded_bytes += size
        self.n_images += 1
        shape = png_size(data)
        wide = wide or (shape is not None and shape[0] >= 1.8 * max(shape[1], 1))  # panels
        return figure(data_uri(data, path.suffix), caption, name, wide)


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


# ----------------------------------------------------------------------------- reading files


class Folder:
    """A run folder's files, each parsed once; unreadable files become notes, not crashes."""

    def __init__(self, node: RunFolder):
        self.node, self.path = node, node.path
        self.notes: list[str] = []
        self._cache: dict[str, object] = {}

    def has(self, name: str) -> bool:
        return self.node.has(name)

    def json(self, name: str):
        if name not in self._cache:
            value = None
            if self.has(name):
                try:
                    value = json.loads((self.path / name).read_text())
                except (OSError, ValueError) as error:
                    self.notes.append(f"{name} cannot be read: {error}")
            self._cache[name] = value
        return self._cache[name]

    def yaml(self, name: str):
        if name not in self._cache:
            value = None
            if self.has(name):
                import yaml

                try:
                    value = yaml.safe_load((self.path / name).read_text())
                except (OSError, yaml.YAMLError) as error:
                    self.notes.append(f"{name} cannot be read: {error}")
            self._cache[name] = value
        return self._cache[name]

    def text(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text() if self.has(name) else None
        except OSError as error:
            self.notes.append(f"{name} cannot be read: {error}")
            return None


def describe(folder: Folder) -> str:
    """What made this folder: the command (and variant, task) as far as the files tell."""
    node = folder.node
    if not node.is_run:
        return "folder of runs"
    kinds = []
    folds = [c for c in node.child_names if c.startswith("fold_")]
    variants = [c for c in node.child_names if c in VARIANT_FOLDERS]
    if folder.has("demo_summary.json"):
        kinds.append("mritumor demo")
    if folder.has("cv_summary.json") or folds:
        config = folder.yaml("config.yaml")
        k = config.get("cv") if isinstance(config, Mapping) else None
        k = k if isinstance(k, int) and k > 0 else len(folds)
        finished = sum(1 for c in node.children if c.has("test_metrics.json"))
        done = "" if folder.has("cv_summary.json") else f" ({finished} of {k} folds finished)"
        kinds.append(f"train-hierarchical --cv {k}{done}")
    if folder.has("comparison.json"):
        kinds.append("mritumor compare")
    elif folder.has("comparison.md") or variants:
        kinds.append("train-multitask --variant all")
    if folder.has("simclr_pretrain.pt"):
        kinds.append("mritumor pretrain (SimCLR)")
    if folder.has("ssl_eval_metrics.json"):
        kinds.append("mritumor evaluate-ssl")
    if folder.has("attribution_summary.json"):
        kinds.append("mritumor explain")
    metrics = folder.json("test_metrics.json")
    evaluation = folder.json("evaluation.json")
    if isinstance(evaluation, Mapping):
        variant = f", variant {evaluation['variant']}" if evaluation.get("variant") else ""
        kinds.append(f"mritumor evaluate ({evaluation.get('task', '?')}{variant})")
    elif isinstance(metrics, Mapping):
        if "variant" in metrics:
            kinds.append(f"train-multitask, variant {metrics['variant']}")
        else:
            kinds.append("train-hierarchical")
    if kinds:
        return " + ".join(kinds)
    config = folder.yaml("config.yaml")
    config = config if isinstance(config, Mapping) else {}
    if "variant" in config:
        command = f"train-multitask, variant {config['variant']}"
    elif "pooling" in config:
        command = "train-hierarchical"
    else:
        command = "training run"
    return f"{command}: no test metrics (unfinished, interrupted or still running?)"


# ----------------------------------------------------------------------------- the parts


def summary_part(folder: Folder) -> str:
    parts = []
    demo = folder.json("demo_summary.json")
    if isinstance(demo, Mapping):
        items = [(k, fmt_interval(v) if is_interval(v) else v) for k, v in demo.items()]
        parts.append(f"<p>Demo summary (<code>demo_summary.json</code>):</p>{_kv(items)}")
    evaluation = folder.json("evaluation.json")
    if isinstance(evaluation, Mapping):
        keys = ("checkpoint", "task", "variant", "data_root", "split", "n_patients", "n_slices",
                "skipped_items", "temperature", "calibrated", "model_made")  # fmt: skip
        items = [(k, evaluation[k]) for k in keys if k in evaluation]
        parts.append(f"<p>What was evaluated (<code>evaluation.json</code>):</p>{_kv(items)}")
    if folder.has("simclr_pretrain.pt"):
        size = _size(folder.path / "simclr_pretrain.pt")
        parts.append(
            f"<p>SimCLR checkpoint <code>simclr_pretrain.pt</code> ({esc(size)}): encoder and "
            "projection weights, the encoder's configuration and the run's metadata (epochs, best "
            "epoch, data, versions, commit). The report does not open checkpoints; "
            "<code>mritumor evaluate-ssl --ckpt</code> measures the encoder.</p>"
        )
    ssl = folder.json("ssl_eval_metrics.json")
    if isinstance(ssl, Mapping):
        parts.append(ssl_part(ssl))
    explain = folder.json("attribution_summary.json")
    if isinstance(explain, Mapping):
        parts.append(explain_part(explain))
    return "".join(parts)


def _kv(items) -> str:
    def shown(value) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, (Mapping, list)):
            return json.dumps(value, default=str)
        return fmt(value)

    return key_value_table((key, shown(value)) for key, value in items)


def ssl_part(ssl: Mapping) -> str:
    rows = []
    for name, label in (("linear_probe", "linear probe"), ("knn", "k-NN")):
        scores = ssl.get(name)
        if isinstance(scores, Mapping):
            if name == "knn" and scores.get("k") is not None:
                label = f"k-NN (k = {scores['k']})"
            rows.append((label, fmt(scores.get("accuracy")), fmt(scores.get("balanced_accuracy"))))
    encoder = ssl.get("encoder_config") or {}
    patients, slices, split = (ssl.get(k) or {} for k in ("patients", "slices", "split"))
    items = [
        ("checkpoint", ssl.get("checkpoint")),
        ("encoder", f"{encoder.get('name', '?')}, {encoder.get('in_channels', '?')} channel(s), "
                    f"{encoder.get('image_size', '?')} px, {encoder.get('feature_dim', '?')} features"),
        ("label", ssl.get("label")),
        ("label fraction", ssl.get("label_fraction")),
        ("patients (labelled / available / test)",
         f"{patients.get('labelled', '?')} / {patients.get('available_for_training', '?')} / "
         f"{patients.get('test', '?')}"),
        ("slices (train / test)", f"{slices.get('train', '?')} / {slices.get('test', '?')}"),
        ("split", f"{split.get('source', '?')} ({split.get('strategy', '?')})"),
        ("classes", ", ".join(map(str, ssl.get("classes") or []))),
        ("seed", ssl.get("seed")),
    ]  # fmt: skip
    return (
        "<p>Frozen-embedding probes (<code>ssl_eval_metrics.json</code>), test slices:</p>"
        + table(["probe", "accuracy", "balanced accuracy"], rows)
        + _kv(items)
    )


def explain_part(summary: Mapping) -> str:
    items = [
        (k, summary.get(k))
        for k in ("checkpoint", "task", "data_root", "n_patients", "n_explained_slices")
        if k in summary
    ]
    if summary.get("classes"):
        items.append(("classes", ", ".join(map(str, summary["classes"]))))
    parts = [f"<p>Attribution run (<code>attribution_summary.json</code>):</p>{_kv(items)}"]
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


def metric_rows(metrics: Mapping) -> tuple[list[tuple[str, str]], list[str]]:
    """(metric, 'value (low–high)') rows of a test_metrics.json, and its text entries."""
    rows, texts = [], []
    for key, value in metrics.items():
        if is_interval(value):
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


def metrics_part(folder: Folder, children: list[Folder]) -> str:
    parts = []
    metrics = folder.json("test_metrics.json")
    if isinstance(metrics, Mapping):
        rows, texts = metric_rows(metrics)
        parts.append(
            table(["metric", "value (95 % CI)"], rows, css="metrics")
            + "".join(note(t) for t in texts)
            + '<p class="meta">Intervals: 95 % percentile bootstrap over test patients '
            "(<code>test_metrics.json</code>).</p>"
        )
    cv = folder.json("cv_summary.json")
    if isinstance(cv, Mapping):
        parts.append(cv_part(cv))
    folds = [c for c in children if c.path.name.startswith("fold_")]
    if folds:
        parts.append(per_fold_part(folds))
    if folder.has("comparison.md"):
        text = folder.text("comparison.md") or ""
        source = "comparison.md"
        parts.append(
            f'<div class="md">{markdown(text)}</div><p class="meta">From <code>{source}</code>.</p>'
        )
    elif isinstance(folder.json("comparison.json"), Mapping):
        parts.append(compare_summary(folder.json("comparison.json")))
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
    per_fold = [(f.path.name, f.json("test_metrics.json")) for f in folds]
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


def compare_summary(report: Mapping) -> str:
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
    return table(["run", "accuracy", "macro AUC", "mean Dice"], rows, css="metrics")


def compare_runs_part(folder: Folder) -> str:
    report = folder.json("comparison.json")
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
    html = _kv(items)
    per_patient = seg.get("per_patient_dice")
    if isinstance(per_patient, Mapping) and per_patient:
        rows = sorted(
            per_patient.items(), key=lambda kv: (kv[1] is None, kv[1] if kv[1] is not None else 0)
        )
        html += (
            f"<details><summary>Dice per test patient ({len(rows)}, worst first)</summary>"
            + table(["patient", "mean Dice"], [(p, fmt(v)) for p, v in rows])
            + "</details>"
        )
    return html


def training_curves(folder: Path) -> str:
    """Lightning's CSV logs (``logs/version_*/metrics.csv``) as inline SVG charts."""
    logs = folder / "logs"
    if not logs.is_dir():
        return ""
    versions = sorted(
        (p for p in logs.glob("version_*/metrics.csv")), key=lambda p: natural_key(p.parent.name)
    )
    series: dict[str, dict[float, float]] = {}
    for path in versions:
        try:
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    x = _float(row.get("epoch"))
                    if x is None:
                        continue
                    for name, text in row.items():
                        value = _float(text)
                        if name in ("epoch", "step") or value is None:
                            continue
                        series.setdefault(name, {})[x] = value  # the last value of an epoch
        except (OSError, csv.Error):
            continue
    if not series:
        return ""
    losses = {k: sorted(v.items()) for k, v in series.items() if "loss" in k}
    others = {
        k: sorted(v.items())
        for k, v in series.items()
        if "loss" not in k and not k.startswith("lr")
    }
    charts = [
        line_chart(losses, "Loss per epoch"),
        line_chart(others, "Validation metrics per epoch"),
    ]
    charts = [c for c in charts if c]
    source = ", ".join(str(p.relative_to(folder)) for p in versions)
    return (
        '<div class="charts">'
        + "".join(charts)
        + "</div>"
        + f'<p class="meta">From <code>{esc(source)}</code> (x: epoch, counted from 0).</p>'
    )


def _float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def predictions_part(folder: Folder, preview_rows: int) -> str:
    path = folder.path / "predictions.csv"
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
    value = _float(text)
    if value is not None and not text.strip().lstrip("-").isdigit():
        return fmt(value)
    return text if len(text) <= 40 else "…" + text[-39:]


def split_part(folder: Folder) -> str:
    parts = []
    for name in ("split.json", "pretrain_split.json"):
        split = folder.json(name)
        if not isinstance(split, Mapping):
            continue
        counts = " / ".join(str(len(split.get(p) or [])) for p in ("train", "val", "test"))
        items = [
            ("patients (train / val / test)", counts),
            ("strategy", split.get("strategy")),
            ("grouped by", split.get("group_by")),
            ("seed", split.get("seed")),
        ]
        if split.get("fold") is not None:
            items.append(("fold", split.get("fold")))
        for key, value in (split.get("extra") or {}).items():
            items.append(
                (key, value if isinstance(value, (str, int, float)) else json.dumps(value))
            )
        parts.append(f"<p><code>{name}</code></p>{_kv(items)}")
    return "".join(parts)


def config_part(folder: Folder) -> str:
    config = folder.yaml("config.yaml")
    if not isinstance(config, Mapping):
        return ""

    def shown(value) -> str:
        return DASH if value is None else fmt(value) if isinstance(value, bool) else str(value)

    items = "".join(
        f"<div><dt>{esc(k)}</dt><dd>{esc(shown(v))}</dd></div>" for k, v in sorted(config.items())
    )
    return (
        f'<dl class="config">{items}</dl><p class="meta">From <code>config.yaml</code>: re-run '
        "with <code>--config config.yaml</code>.</p>"
    )


def files_part(folder: Folder) -> str:
    rows = []
    for name in folder.node.files:
        path = folder.path / name
        try:
            stat = path.stat()
        except OSError:
            continue
        extra = " (checkpoint: not opened)" if name.endswith((".pt", ".ckpt")) else ""
        rows.append((name + extra, fmt_bytes(stat.st_size), _date(stat.st_mtime)))
    if not rows:
        return ""
    return (
        f"<details><summary>{len(rows)} file{'s' * (len(rows) != 1)} in this folder</summary>"
        + table(["file", "size", "modified"], rows, css="small")
        + "</details>"
    )


def figures(page: Page, folder: Folder, known: list[tuple[str, str]], wide: bool = False) -> str:
    html = [
        page.image(folder.path / name, caption, name, wide)
        for name, caption in known
        if folder.has(name)
    ]
    return f'<div class="figs">{"".join(html)}</div>' if html else ""


def gallery(page: Page, folder: Folder) -> tuple[str, int]:
    """Images of the folder the report has no place for, and those in its non-run sub-folders
    (e.g. explain's ``patients/<id>/``), at most ``max_gallery``."""
    runs_below = set()
    for child in folder.node.walk():
        if child is not folder.node:
            path = child.path
            while path != folder.path and path != path.parent:
                runs_below.add(path)
                path = path.parent
    images = [
        folder.path / name
        for name in folder.node.files
        if Path(name).suffix.lower() in IMAGE_TYPES and name not in KNOWN_FIGURES
    ]
    for base, dirs, files in os.walk(folder.path):
        base_path = Path(base)
        depth = len(base_path.relative_to(folder.path).parts)
        dirs[:] = sorted(
            (d for d in dirs if d not in NOT_FIGURE_DIRS and not d.startswith(".")
             and base_path / d not in runs_below and depth < 3),
            key=natural_key,
        )  # fmt: skip
        if not folder.node.is_run:  # a plain folder of runs: only its own images
            dirs[:] = []
        if base_path == folder.path:
            continue
        images += [
            base_path / f
            for f in sorted(files, key=natural_key)
            if Path(f).suffix.lower() in IMAGE_TYPES
        ]
    shown = images[: page.options.max_gallery]
    html = [page.image(p, str(p.relative_to(folder.path)), p.name) for p in shown]
    more = len(images) - len(shown)
    text = f'<div class="figs">{"".join(html)}</div>' if html else ""
    if more > 0:
        text += note(
            f"{more} more image(s) in this folder are not embedded "
            f"(at most {page.options.max_gallery} per run)"
        )
    return text, len(images)


def _size(path: Path) -> str:
    try:
        return fmt_bytes(path.stat().st_size)
    except OSError:
        return "?"


def _date(timestamp: float) -> str:
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def written(folder: Folder) -> str | None:
    times = []
    for name in folder.node.files:
        try:
            times.append((folder.path / name).stat().st_mtime)
        except OSError:
            continue
    if not times:
        return None
    first, last = _date(min(times)), _date(max(times))
    return last if first == last else f"{first} – {last}"


# ----------------------------------------------------------------------------- sections


def subsection(level: int, title: str, body: str, css: str = "") -> str:
    if not body:
        return ""
    tag = f"h{min(level, 6)}"
    return f'<div class="part {esc(css)}"><{tag} class="sub">{esc(title)}</{tag}>{body}</div>'


def render_folder(page: Page, node: RunFolder, number: str, depth: int, title: str) -> str:
    folder = Folder(node)
    children = [Folder(c) for c in node.children]
    kind = describe(folder)
    anchor = "run-" + number.replace(".", "-")
    page.toc.append(TocEntry(number, title, kind, anchor, depth))
    level = min(depth + 2, 6)
    sub = level + 1
    report = folder.json("test_report.json")
    report = report if isinstance(report, Mapping) else None
    metrics = folder.json("test_metrics.json")
    metrics = metrics if isinstance(metrics, Mapping) else None

    meta = [f"<span>{esc(kind)}</span>", f"<code>{esc(node.path)}</code>"]
    when = written(folder)
    if when:
        meta.append(f"files written {esc(when)}")
    body = [
        f'<section class="run depth-{depth}" id="{anchor}">',
        f"<h{level}>{esc(number)} {esc(title)}</h{level}>",
        f'<p class="meta">{" · ".join(meta)}</p>',
    ]
    summary = summary_part(folder)
    compare_runs = compare_runs_part(folder)
    body.append(summary + compare_runs)
    body.append(subsection(sub, "Metrics", metrics_part(folder, children)))
    if report:
        body.append(subsection(sub, "Per class", per_class_part(report)))
    body.append(subsection(sub, "Curves", figures(page, folder, CURVES)))
    confusion = (confusion_tables(report) if report else "") + figures(page, folder, CONFUSION)
    body.append(subsection(sub, "Confusion matrices", confusion))
    calibration = calibration_part(folder, report, metrics) + figures(page, folder, CALIBRATION)
    body.append(subsection(sub, "Calibration", calibration))
    segmentation = segmentation_part(report) + figures(page, folder, OVERLAYS, wide=True)
    body.append(subsection(sub, "Segmentation examples", segmentation))
    body.append(subsection(sub, "Training curves", training_curves(node.path)))
    other, n_other = gallery(page, folder)
    explain = folder.has("attribution_summary.json")
    body.append(subsection(sub, "Figures" if explain else "Other figures", other))
    if folder.has("predictions.csv"):
        body.append(
            subsection(sub, "Predictions", predictions_part(folder, page.options.preview_rows))
        )
    body.append(subsection(sub, "Split", split_part(folder)))
    body.append(subsection(sub, "Configuration", config_part(folder)))
    body.append(subsection(sub, "Files", files_part(folder)))
    body.extend(note(n) for n in folder.notes)
    for index, child in enumerate(node.children, start=1):
        child_title = str(child.path.relative_to(node.path))
        body.append(render_folder(page, child, f"{number}.{index}", depth + 1, child_title))
    body.append("</section>")
    return "".join(part for part in body if part)


def environment() -> list[tuple[str, str]]:
    """What made the report (runs' own versions and commit live in their checkpoints)."""
    versions = [f"Python {platform.python_version()}"]
    for package in ("torch", "lightning", "numpy"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    items = [
        ("generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("by", f"mritumor {__version__}" + (f" (commit {git_commit()})" if git_commit() else "")),
        ("with", ", ".join(versions)),
        ("machine", f"{platform.system()} {platform.machine()}"),
    ]
    return items


_COMMIT: list[str | None] = []


def git_commit() -> str | None:
    if not _COMMIT:
        try:
            result = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
            )
            _COMMIT.append(result.stdout.strip() or None)
        except (OSError, subprocess.SubprocessError):
            _COMMIT.append(None)
    return _COMMIT[0]


def toc_html(entries: list[TocEntry]) -> str:
    items = "".join(
        f'<li class="d{e.depth}"><a href="#{e.anchor}">{esc(e.number)} {esc(e.title)}</a> '
        f'<span class="kind">{esc(e.kind)}</span></li>'
        for e in entries
    )
    return f'<nav class="toc"><h2>Contents</h2><ul>{items}</ul></nav>'
