"""`mritumor report`: one self-contained HTML page for run folders.

Two sets of run folders: a synthetic tree written here (every kind of folder: demo, pretrain,
evaluate-ssl, CV, --variant all, explain, compare; fast) and real tiny runs of the commands
(train-hierarchical, train-multitask, compare), so the report cannot drift from what they write.
The last test renders the page in headless Chromium over the DevTools protocol: no console
error, no failed or network request, no broken image, not blank, no horizontal overflow.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mritumor.cli import main
from mritumor.errors import MritumorError
from mritumor.report import Options, build_report, find_runs, write_report

# ----------------------------------------------------------------------------- helpers


def expected(value) -> str:
    """The report's number format, written independently: 3 decimals, tiny ones scientific."""
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2e}" if value and abs(value) < 1e-3 else f"{value:.3f}"


def expected_interval(entry: dict) -> str:
    if entry.get("value") is None or entry.get("low") is None or entry.get("high") is None:
        return expected(entry["value"])
    return f"{expected(entry['value'])} ({expected(entry['low'])}–{expected(entry['high'])})"


def own_part(html: str, anchor: str) -> str:
    """A run section's own content: from its id to its first sub-section or its end."""
    start = html.index(f'id="{anchor}"')
    ends = [i for i in (html.find("<section", start), html.find("</section>", start)) if i > 0]
    return html[start : min(ends)]


def anchor_of(html: str, title: str) -> str:
    """The id of the section whose TOC entry has this title (number, space, title)."""
    match = re.search(rf'<a href="#(run-[\d-]+)">[\d.]+ {re.escape(title)}</a>', html)
    assert match, f"no table-of-contents entry for {title}"
    return match.group(1)


def metric_cell(name: str, text: str) -> str:
    return f'<td>{name}</td><td class="num">{text}</td>'


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def parse(html: str) -> Tags:
    parser = Tags()
    parser.feed(html)
    return parser


class Tables(HTMLParser):
    """Every <table> as (header cells, body rows), each cell's text as the browser shows it."""

    def __init__(self):
        super().__init__()
        self.tables: list[tuple[list[str], list[list[str]]]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_head = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append(([], []))
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            header, rows = self.tables[-1]
            header.extend(self._row) if self._in_head else rows.append(self._row)
            self._row = None
        elif tag == "thead":
            self._in_head = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def table_with(html: str, header: list[str]) -> list[list[str]]:
    """The body rows of the one table in ``html`` with this header."""
    parser = Tables()
    parser.feed(html)
    found = [rows for head, rows in parser.tables if head == header]
    assert len(found) == 1, f"{len(found)} tables with the header {header}"
    return found[0]


def number(value):
    """A pandas cell as the JSON it came from: NaN (an empty CSV cell) is None."""
    return None if pd.isna(value) else float(value)


def png(path: Path, size=(96, 64), seed=0, noise=False) -> Path:
    rng = np.random.default_rng(seed)
    if noise:
        array = rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    else:
        x = np.linspace(0, 255, size[0], dtype=np.uint8)
        array = np.stack([np.tile(x, (size[1], 1))] * 3, axis=-1)
        array[size[1] // 3 : size[1] // 2, :, 1] = 200 - seed * 20
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))


def ci(value, low, high) -> dict:
    return {"value": value, "low": low, "high": high}


def hierarchical_metrics(shift: float = 0.0) -> dict:
    return {
        "n_patients": 12,
        "tumor_type_accuracy": ci(0.75 - shift, 0.5, 0.9166666),
        "tumor_type_macro_f1": ci(0.7012 - shift, 0.41234, 0.9),
        "tumor_type_macro_auc": ci(0.8888 - shift, 0.7, 1.0),
        "tumor_type_auc": {"glioma": ci(0.9, 0.75, 1.0), "meningioma": ci(0.81234, 0.6, 0.95)},
        "ece_before_scaling": 0.1234,
        "ece_after_scaling": 0.0004321,
        "temperature": 1.5,
        "n_patients_with_grade": 6,
        "grade_e2e_accuracy": ci(0.5, 0.1666, 0.8333),
        "grade_conditional_accuracy": ci(0.6666, 0.3333, 1.0),
    }


def hierarchical_run(folder: Path, shift: float = 0.0) -> Path:
    write_json(folder / "test_metrics.json", hierarchical_metrics(shift))
    per_class = {
        name: {"precision": 0.8, "recall": 0.7, "f1": 0.75, "auc": 0.9, "average_precision": 0.85,
               "support": 6}
        for name in ("glioma", "meningioma")
    }  # fmt: skip
    write_json(
        folder / "test_report.json",
        {
            "n_patients": 12,
            "temperature": 1.5,
            "skipped": {},
            "tumor_type": {
                "metrics": {"n": 12, "per_class": per_class, "confusion_matrix": [[5, 1], [2, 4]]},
                "intervals": {},
            },
            "calibration": {"before_scaling": {"ece": 0.1234, "mce": 0.3}, "after_scaling": {"ece": 0.0004321, "mce": 0.2}},
        },
    )  # fmt: skip
    for k, name in enumerate(
        ["roc_tumor_type_ovr.png", "pr_tumor_type_ovr.png", "confusion_tumor_type.png",
         "reliability_tumor_type.png"]
    ):  # fmt: skip
        png(folder / name, seed=k)
    (folder / "predictions.csv").write_text(
        "patient_id,true_type,pred_type,p_type_glioma,p_type_meningioma\n"
        "P1,glioma,glioma,0.9,0.1\nP2,meningioma,glioma,0.6,0.4\nP3,meningioma,meningioma,0.2,0.8\n"
    )
    write_json(
        folder / "split.json",
        {"train": ["a", "b", "c"], "val": ["d"], "test": ["P1", "P2", "P3"],
         "strategy": "stratified:type", "group_by": "patient_id", "seed": 0, "fold": None,
         "extra": {}},
    )  # fmt: skip
    (folder / "config.yaml").write_text("backbone: small_cnn\nepochs: 3\npooling: attention\n")
    (folder / "best.pt").write_bytes(b"not a real checkpoint: the report must not open it")
    return folder


def multitask_metrics(variant: str) -> dict:
    metrics: dict = {"variant": variant}
    if variant != "B":
        metrics.update(
            dice=ci(0.61, 0.5, 0.7), iou=ci(0.45, 0.35, 0.55), hd95=ci(7.25, 5.5, 9.125),
            dice_per_patient=ci(0.6, 0.48, 0.71),
        )  # fmt: skip
    if variant != "A":
        metrics.update(
            tumor_type_accuracy=ci(0.8, 0.7, 0.9), ece_before_scaling=0.05, ece_after_scaling=0.04
        )
    return metrics


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """One folder holding every kind of run folder, written by hand in the commands' layouts."""
    from mritumor.evaluation.metrics import cv_summary  # the functions the commands use
    from mritumor.evaluation.multitask import write_comparison

    root = tmp_path_factory.mktemp("report") / "runs"
    demo = root / "demo"
    write_json(demo / "demo_summary.json",
               {"seconds": 12.5, "data_root": str(demo / "data"), "run": str(demo / "two_step"),
                "tumor_type_accuracy": ci(0.75, 0.5, 0.9166666), "grade_e2e_accuracy": None})  # fmt: skip
    for k in range(3):  # the demo's synthetic data: not a run, its slices are no figures
        png(demo / "data" / "glioma" / f"P{k}" / "slice_0.png", seed=k)
    ssl = demo / "simclr_pretrain"
    (ssl / "logs" / "version_0").mkdir(parents=True)
    (ssl / "simclr_pretrain.pt").write_bytes(b"\0" * 2048)
    (ssl / "config.yaml").write_text("encoder: small_cnn\nepochs: 2\n")
    (ssl / "logs" / "version_0" / "metrics.csv").write_text(
        "epoch,step,train_loss,val_loss\n0,3,,4.5\n0,3,4.6,\n1,7,,4.1\n1,7,4.2,\n2,11,,3.9\n2,11,3.7,\n"
    )
    write_json(ssl / "ssl_eval" / "ssl_eval_metrics.json",
               {"checkpoint": str(ssl / "simclr_pretrain.pt"),
                "encoder_config": {"name": "small_cnn", "in_channels": 1, "image_size": 32, "feature_dim": 64},
                "label": "tumor_type", "label_fraction": 1.0, "seed": 0,
                "split": {"source": "checkpoint", "strategy": "stratified:type"},
                "patients": {"labelled": 8, "available_for_training": 8, "test": 4},
                "slices": {"train": 24, "test": 12}, "classes": ["glioma", "meningioma"],
                "linear_probe": {"accuracy": 0.8333333, "balanced_accuracy": 0.8125},
                "knn": {"accuracy": 0.75, "balanced_accuracy": 0.7, "k": 5}})  # fmt: skip
    png(ssl / "ssl_eval" / "ssl_embedding_pca.png", seed=4)
    two_step = hierarchical_run(demo / "two_step")
    png(two_step / "extra_plot.png", seed=5)  # unknown to the report: 'other figures'
    png(two_step / "huge_noise.png", size=(300, 300), noise=True)  # over the test's size limit

    cv = root / "cv"
    (cv / "config.yaml").parent.mkdir(parents=True)
    (cv / "config.yaml").write_text("cv: 2\npooling: mean\n")
    folds = [hierarchical_run(cv / f"fold_{k}", shift=0.1 * k) for k in range(2)]
    write_json(
        cv / "cv_summary.json",
        cv_summary([json.loads((f / "test_metrics.json").read_text()) for f in folds]),
    )

    variants = root / "multitask_all"
    reports = {}
    for variant in "ABCDEFG":
        write_json(variants / variant / "test_metrics.json", multitask_metrics(variant))
        png(variants / variant / ("overlays.png" if variant != "B" else "roc_tumor_type_ovr.png"))
        reports[variant] = {"metrics": multitask_metrics(variant)}
    reports["D"]["metrics"]["dice"] = ci(0.00042, None, None)  # tiny, and no interval
    reports["F"]["metrics"]["tumor_type_accuracy"] = ci(0.8765432, 0.7012345, 0.95)
    write_json(variants / "C" / "stage1_A" / "test_metrics.json", multitask_metrics("A"))
    write_comparison(reports, variants)  # comparison.csv and comparison.md, as --variant all
    (variants / "config.yaml").write_text("variant: all\n")

    explain = root / "explain"
    write_json(explain / "attribution_summary.json",
               {"checkpoint": "best.pt", "task": "hierarchical", "classes": ["glioma", "meningioma"],
                "settings": {"methods": ["occlusion", "gradcam"], "window": 8},
                "n_patients": 1, "n_explained_slices": 2,
                "attribution": {"occlusion": {"share_in_mask": {"mean": 0.41, "n": 2}}},
                "patients": [{"patient_id": "P1", "true_type": "glioma", "predicted_type": "glioma",
                              "folder": "patients/P1"}]})  # fmt: skip
    png(explain / "patients" / "P1" / "slice_importance.png", seed=1)
    png(explain / "patients" / "P1" / "slice_002.png", seed=2)

    compare = root / "compare"
    write_json(compare / "comparison.json",
               {"runs": [{"name": "a", "path": "/x/a", "n_rows": 3, "classification": True,
                          "dice": False, "units_dropped": 0}],
                "summary": {"a": {"accuracy": ci(0.7, 0.6, 0.8)}}})  # fmt: skip
    png(compare / "roc_overlay.png", seed=3)
    return root


@pytest.fixture(scope="module")
def synthetic_html(synthetic) -> str:
    return build_report([synthetic], Options(max_image_bytes=50_000))


def train_argv(data_root: Path, outdir: Path, command: str, *extra: str) -> list[str]:
    return [
        "-q", command, "--data_root", str(data_root), "--outdir", str(outdir),
        "--backbone", "small_cnn", "--image_size", "32", "--epochs", "1", "--n_boot", "50",
        "--patience", "0", "--augment", "none", "--num_workers", "0", "--accelerator", "cpu",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> Path:
    """Tiny real runs: train-hierarchical, train-multitask (variant E), compare of three runs."""
    from mritumor.data.acquire.synthetic import write_synthetic_dataset

    base = tmp_path_factory.mktemp("report_real")
    data = write_synthetic_dataset(
        base / "data", patients_per_class=4, slices_per_patient=3, image_size=32, seed=3
    )
    runs = base / "runs"
    hierarchical = runs / "hierarchical"
    argv = train_argv(
        data, hierarchical, "train-hierarchical", "--batch_size", "4", "--bag_size", "3"
    )
    assert main(argv) == 0
    argv = train_argv(data, runs / "multitask_E", "train-multitask", "--variant", "E",
                      "--batch_size", "16", "--val_frac", "0.25", "--test_frac", "0.3")  # fmt: skip
    assert main(argv) == 0
    # two more 'runs' with other predictions for the same patients, then the real compare
    # (three runs: the Friedman tests run too)
    table = pd.read_csv(hierarchical / "predictions.csv")
    columns = [c for c in table.columns if c.startswith("p_type_")]
    others = []
    for name, reorder in (("shuffled", lambda a: a[::-1]), ("rolled", lambda a: np.roll(a, 1, 1))):
        other = runs / name
        other.mkdir()
        changed = table.copy()
        changed[columns] = reorder(table[columns].to_numpy())
        changed.to_csv(other / "predictions.csv", index=False)
        others.append(str(other))
    argv = ["-q", "compare", str(hierarchical), *others, "--outdir", str(runs / "comparison"),
            "--n_boot", "50"]  # fmt: skip
    assert main(argv) == 0
    return runs


# ----------------------------------------------------------------------------- finding runs


def test_finds_every_kind_of_run_folder_nested_like_the_folders(synthetic):
    tree = find_runs(synthetic)
    assert not tree.is_run  # 'runs' itself is a container
    found = {str(node.path.relative_to(synthetic)) for node in tree.walk() if node.is_run}
    assert found == {
        "demo", "demo/simclr_pretrain", "demo/simclr_pretrain/ssl_eval", "demo/two_step",
        "cv", "cv/fold_0", "cv/fold_1", "multitask_all", *(f"multitask_all/{v}" for v in "ABCDEFG"),
        "multitask_all/C/stage1_A", "explain", "compare",
    }  # fmt: skip
    assert find_runs(synthetic / "cv").path == synthetic / "cv"


def test_refuses_missing_empty_and_unrecognised_folders(tmp_path, capsys):
    with pytest.raises(MritumorError, match="does not exist"):
        find_runs(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    png(tmp_path / "empty" / "sub" / "picture.png")
    with pytest.raises(MritumorError, match="no run folder mritumor recognises"):
        find_runs(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(MritumorError, match="not a folder"):
        find_runs(tmp_path / "file.txt")
    assert main(["report", str(tmp_path / "empty"), "--output", str(tmp_path / "r.html")]) == 2
    assert "no run folder mritumor recognises" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


# ----------------------------------------------------------------------------- the page


def test_every_run_has_a_section_linked_from_the_contents(synthetic_html):
    html = synthetic_html
    links = re.findall(r'<a href="#(run-[\d-]+)">', html)
    ids = re.findall(r'<section class="run depth-\d" id="(run-[\d-]+)">', html)
    assert links == ids and len(ids) == 1 + 18  # the container and its 18 runs
    for title, kind in [
        ("demo", "mritumor demo"),
        ("simclr_pretrain", "mritumor pretrain (SimCLR)"),
        ("ssl_eval", "mritumor evaluate-ssl"),
        ("two_step", "train-hierarchical"),
        ("cv", "train-hierarchical --cv 2"),
        ("fold_1", "train-hierarchical"),
        ("multitask_all", "train-multitask --variant all"),
        ("G", "train-multitask, variant G"),
        ("stage1_A", "train-multitask, variant A"),
        ("explain", "mritumor explain"),
        ("compare", "mritumor compare"),
    ]:
        part = own_part(html, anchor_of(html, title))
        assert f"<span>{kind}</span>" in part, title
    assert "data/glioma" not in html  # the demo's data is neither a run nor a figure


def test_metrics_tables_hold_the_json_values_with_intervals(synthetic, synthetic_html):
    html = synthetic_html
    part = own_part(html, anchor_of(html, "two_step"))
    metrics = hierarchical_metrics()
    assert metric_cell("tumor_type_accuracy", "0.750 (0.500–0.917)") in part
    assert metric_cell("tumor_type_auc · meningioma", "0.812 (0.600–0.950)") in part
    assert metric_cell("ece_after_scaling", "4.32e-04") in part
    assert metric_cell("n_patients", "12") in part
    for name in ("tumor_type_macro_f1", "grade_e2e_accuracy", "grade_conditional_accuracy"):
        assert metric_cell(name, expected_interval(metrics[name])) in part
    # confusion counts, per-class table, calibration before/after, split, config, predictions
    assert '<th>glioma</th><td class="num" style=' in part
    assert "<td>0.123</td>" in part.replace(' class="num"', "")
    assert "3 / 1 / 3" in part and "stratified:type" in part
    assert "<dt>pooling</dt><dd>attention</dd>" in part
    assert "3 rows (one per test patient)" in part and "true type in 2 of 3 rows" in part

    cv = own_part(html, anchor_of(html, "cv"))
    summary = json.loads((synthetic / "cv" / "cv_summary.json").read_text())
    accuracy = summary["tumor_type_accuracy/value"]
    assert (
        metric_cell("tumor_type_accuracy", f"{accuracy['mean']:.3f} ± {accuracy['sd']:.3f}") in cv
    )
    assert "0.650 (0.500–0.917)" in cv  # fold_1's accuracy in the per-fold table

    variants = own_part(html, anchor_of(html, "multitask_all"))
    assert "Segmentation-only (A)" in variants and '<td class="num">0.7311</td>' in variants
    variant_g = own_part(html, anchor_of(html, "G"))
    assert metric_cell("hd95", "7.250 (5.500–9.125)") in variant_g
    ssl_eval = own_part(html, anchor_of(html, "ssl_eval"))
    assert (
        "<td>linear probe</td>" in ssl_eval and "0.833" in ssl_eval and "k-NN (k = 5)" in ssl_eval
    )
    pretrain = own_part(html, anchor_of(html, "simclr_pretrain"))
    assert "<svg" in pretrain and "Loss per epoch" in pretrain and "val_loss" in pretrain
    compare = own_part(html, anchor_of(html, "compare"))
    assert '<td>a</td><td class="num">0.700 (0.600–0.800)</td>' in compare
    demo = own_part(html, anchor_of(html, "demo"))
    assert "0.750 (0.500–0.917)" in demo


def test_page_is_self_contained(synthetic_html):
    parsed = parse(synthetic_html)
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) >= 15
    for tag, attrs in parsed.tags:
        assert tag not in ("script", "iframe", "object", "embed")
        for name, value in attrs.items():
            value = value or ""
            assert "http://" not in value and "https://" not in value, (tag, name)
            if name in ("src", "srcset", "poster", "data", "action"):
                assert value.startswith("data:"), (tag, name, value[:40])
            if name == "href":
                assert value.startswith(("#", "data:")), (tag, value)
        if tag == "link":
            assert attrs.get("rel") == "icon" and attrs.get("href") == "data:,"
    for image in images:
        header, payload = image["src"].split(",", 1)
        assert header == "data:image/png;base64"
        assert base64.b64decode(payload, validate=True).startswith(b"\x89PNG\r\n\x1a\n")
    style = "".join(parsed.styles)
    assert "@import" not in style and "url(" not in style


def test_figures_known_unknown_nested_and_too_large(synthetic, synthetic_html):
    html = synthetic_html
    two_step = own_part(html, anchor_of(html, "two_step"))
    roc = (synthetic / "demo" / "two_step" / "roc_tumor_type_ovr.png").read_bytes()
    assert base64.b64encode(roc).decode() in two_step  # the file itself, embedded
    assert "Other figures" in two_step and "extra_plot.png" in two_step
    assert "huge_noise.png" in two_step and "not embedded" in two_step
    figures = re.findall(r"<figure.*?</figure>", two_step)
    assert len(figures) == 5 and not any("huge_noise" in f for f in figures)
    explain = own_part(html, anchor_of(html, "explain"))
    assert "patients/P1/slice_002.png" in explain and explain.count("<img") == 2
    # at most max_gallery 'other figures', the rest counted
    capped = build_report([synthetic / "explain"], Options(max_gallery=1))
    assert capped.count("<img") == 1 and "1 more image(s)" in capped


def test_real_runs_report_matches_their_files(real_runs, tmp_path, capsys):
    output = tmp_path / "out" / "report.html"
    assert main(["report", str(real_runs), "--output", str(output)]) == 0
    assert str(output.resolve()) in capsys.readouterr().out
    html = output.read_text()
    for title in ("hierarchical", "multitask_E"):
        part = own_part(html, anchor_of(html, title))
        metrics = json.loads((real_runs / title / "test_metrics.json").read_text())
        checked = 0
        for name, value in metrics.items():
            if isinstance(value, dict) and "value" in value:
                assert metric_cell(name, expected_interval(value)) in part, name
                checked += 1
            elif name == "per_source":
                for source, entry in value.items():
                    for sub, number in entry.items():
                        cell = expected_interval(number) if isinstance(number, dict) else expected(number)  # fmt: skip
                        assert metric_cell(f"source {source} · {sub}", cell) in part
            elif isinstance(value, dict):
                for sub, entry in value.items():
                    assert metric_cell(f"{name} · {sub}", expected_interval(entry)) in part
                    checked += 1
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                assert metric_cell(name, expected(value)) in part, name
                checked += 1
        assert checked >= 8
        for figure in (real_runs / title).glob("*.png"):
            assert base64.b64encode(figure.read_bytes()).decode() in part, figure.name
        assert "Training curves" in part and "Configuration" in part and "Split" in part
    mt = own_part(html, anchor_of(html, "multitask_E"))
    assert "train-multitask, variant E" in mt and "one per test slice" in mt
    comparison = own_part(html, anchor_of(html, "comparison"))
    assert "mritumor compare" in comparison and "roc_overlay.png" in comparison
    # the comparison's headings one level below its sub-section's
    assert '<h4 class="sub">Metrics</h4>' in comparison
    assert "<h5>Pairwise comparisons (A − B)</h5>" in comparison
    assert "shuffled" in html  # a folder with just predictions.csv is no run, but compare names it


# ----------------------------------------------------------------------------- comparison tables


def test_variant_table_holds_the_numbers_of_comparison_csv(synthetic, synthetic_html):
    """--variant all: one row per variant, read back from the CSV with pandas."""
    frame = pd.read_csv(synthetic / "multitask_all" / "comparison.csv")
    assert len(frame) == 7  # the fixture wrote what the command writes

    def interval(row, name) -> str:
        entry = {k: number(row[f"{name}{s}"]) for k, s in (("value", ""), ("low", "_low"), ("high", "_high"))}  # fmt: skip
        return "–" if entry["value"] is None else expected_interval(entry)

    def seed(value) -> str:
        return "–" if number(value) is None else f"{number(value):.4f}"

    wanted = [
        [f"{row.model} ({row.variant})", interval(row._asdict(), "dice"),
         interval(row._asdict(), "accuracy"), seed(row.seed_dice), seed(row.seed_accuracy)]
        for row in frame.itertuples(index=False)
    ]  # fmt: skip
    part = own_part(synthetic_html, anchor_of(synthetic_html, "multitask_all"))
    header = ["Model", "Seg. Dice (95 % CI)", "Classification accuracy (95 % CI)", "seed Dice",
              "seed accuracy"]  # fmt: skip
    assert table_with(part, header) == wanted
    # spot checks that do not go through the formatting above
    assert ["Naive joint training (D)", "4.20e-04", "0.800 (0.700–0.900)", "0.7344", "0.9232"] in wanted  # fmt: skip
    assert wanted[5][2] == "0.877 (0.701–0.950)" and wanted[1][1] == "–"
    assert "From <code>comparison.csv</code>" in part  # not from the comparison.md beside it


def test_compare_tables_hold_the_numbers_of_its_csv_and_json(real_runs, tmp_path):
    """mritumor compare of three runs: the pairwise table against comparison.csv (pandas), the
    runs table and the Friedman tests against comparison.json."""
    folder = real_runs / "comparison"
    html = build_report([folder])
    frame = pd.read_csv(folder / "comparison.csv")
    report = json.loads((folder / "comparison.json").read_text())
    pairs = frame[frame["run_a"] != "all"]
    assert len(pairs) == 3 * 5  # three pairs × (accuracy, macro AUC, three per-class AUCs)

    def difference(row) -> str:
        text = expected(number(row.difference))
        if number(row.ci_low) is not None and number(row.ci_high) is not None:
            text += f" ({expected(number(row.ci_low))} to {expected(number(row.ci_high))})"
        return text

    wanted = [
        [row.run_a, row.run_b, row.metric, expected(number(row.value_a)),
         expected(number(row.value_b)), difference(row), row.test.split(" (")[0],
         expected(number(row.p_value)),
         expected(number(row.p_holm)) + (" *" if row.significant in (True, "True") else "")]
        for row in pairs.itertuples(index=False)
    ]  # fmt: skip
    header = ["A", "B", "metric", "A", "B", "A − B (CI)", "test", "p", "p (Holm)"]
    assert table_with(html, header) == wanted
    accuracy = pairs[pairs["metric"] == "accuracy"].iloc[0]
    assert f"{accuracy.value_a:.3f}" in wanted[0][3]  # the first row is the first CSV row

    runs = table_with(html, ["run", "accuracy (95 % CI)", "macro AUC (95 % CI)", "mean Dice (95 % CI)"])  # fmt: skip
    assert runs == [
        [name] + [expected_interval(entry[k]) if k in entry else "–"
                  for k in ("accuracy", "macro_auc", "mean_dice")]
        for name, entry in report["summary"].items()
    ]  # fmt: skip
    assert [row[0] for row in runs] == ["hierarchical", "shuffled", "rolled"]
    friedman = report["friedman"]["accuracy"]
    assert friedman is not None and report["friedman"]["dice"] is None
    text = (f"chi² = {expected(friedman['statistic'])}, p = {expected(friedman['p_value'])}, "
            f"{friedman['n_blocks']} patients")  # fmt: skip
    assert text in html and "Friedman test (accuracy)" in html
    assert f"mean ranks: hierarchical {friedman['mean_ranks'][0]:.2f}," in html
    unit = f"Unit of pairing: <code>{report['unit']}</code>; {report['n_units']} units shared"
    assert unit in html and f"Seed {report['seed']}, alpha {report['alpha']}." in html
    for test in report["tests"].values():
        assert test in html.replace("&amp;", "&")
    assert "not in the dice comparison (no dice column)" in html
    # the page is made from the JSON and CSV: the Markdown beside them is not read
    copy = shutil.copytree(folder, tmp_path / "comparison")
    (copy / "comparison.md").write_text("| run | accuracy |\n| --- | --- |\n| x | 0.123 |\n")
    assert metrics_part(build_report([copy])) == metrics_part(html)


def metrics_part(html: str) -> str:
    """The first 'Metrics' sub-section of the page."""
    start = html.index('<h3 class="sub">Metrics</h3>')
    return html[start : html.index('<div class="part', start)]


# ----------------------------------------------------------------------------- Chromium


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class DevTools:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (commands on fd 3, answers on
    fd 4, NUL-separated JSON): no websocket library needed."""

    def __init__(self, binary: str, width: int, height: int, timeout: float = 60):
        self.timeout, self.events, self._id, self._buffer = timeout, [], 0, b""
        self.profile = tempfile.mkdtemp(prefix="mritumor-chromium-")
        child_in, self._out = os.pipe()
        self._in, child_out = os.pipe()

        def pipes_on_3_and_4():  # via fds above 4, so neither pipe is overwritten
            os.dup2(os.dup(child_in), 10)
            os.dup2(os.dup(child_out), 11)
            os.dup2(10, 3, inheritable=True)
            os.dup2(11, 4, inheritable=True)

        self.process = subprocess.Popen(
            [binary, "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
             f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
             f"--window-size={width},{height}", "about:blank"],
            preexec_fn=pipes_on_3_and_4, close_fds=False, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(child_in)
        os.close(child_out)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._out)
        os.close(self._in)
        shutil.rmtree(self.profile, ignore_errors=True)


def render(binary: str, url: str, width: int = 1200, height: int = 2000) -> dict:
    """Load ``url``; its screenshot, layout numbers and every problem the browser reported."""
    browser = DevTools(binary, width, height)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session=session)
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.call("Page.navigate", {"url": url}, session=session)
        browser.wait_for("Page.loadEventFired")
        layout = browser.call(
            "Runtime.evaluate",
            {
                "expression": "JSON.stringify({width: document.documentElement.scrollWidth, "
                "images: document.images.length, broken: [...document.images].filter("
                "i => !i.complete || i.naturalWidth === 0).length})",
                "returnByValue": True,
            },
            session=session,
        )
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=session)
        problems = []
        for event in browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                problems.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):  # fmt: skip
                problems.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                problems.append(f"log: {params['entry']['text']}")
            elif method == "Network.loadingFailed":
                problems.append(f"failed load: {params.get('errorText')}")
            elif method == "Network.requestWillBeSent":
                request = params["request"]["url"]
                if not request.startswith(("data:", "file:", "about:")):
                    problems.append(f"network request: {request}")
        return {
            "screenshot": base64.b64decode(shot["data"]),
            "layout": json.loads(layout["result"]["value"]),
            "problems": problems,
        }
    finally:
        browser.close()


def test_renders_in_headless_chromium(request, tmp_path):
    binary = find_chromium()
    if binary is None:  # before the fixtures: no runs are trained for a skipped test
        pytest.skip(
            "chromium is not installed (`make test` installs the Debian package `chromium` "
            "when it can): the page is not rendered"
        )
    synthetic, real_runs = (request.getfixturevalue(n) for n in ("synthetic", "real_runs"))
    page = write_report([real_runs, synthetic], tmp_path / "report.html")
    result = render(binary, page.resolve().as_uri())
    assert result["problems"] == []
    layout = result["layout"]
    assert layout["images"] >= 20 and layout["broken"] == 0
    assert layout["width"] <= 1200, "the page is wider than the window"
    with Image.open(io.BytesIO(result["screenshot"])) as shot:
        pixels = np.asarray(shot.convert("L"), dtype=float)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 15 and (pixels < 128).mean() > 0.01  # text and figures, not blank
    # and the check can fail: a page with a broken image and a script error is caught
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="missing.png"><script>nope()</script></body></html>')
    failing = render(binary, bad.resolve().as_uri(), 400, 300)
    assert any("exception" in p for p in failing["problems"])
    assert any("failed load" in p for p in failing["problems"])
    assert failing["layout"]["broken"] == 1


def test_uncertainty_section_shows_the_numbers_of_uncertainty_json(tmp_path):
    from mritumor.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "test_metrics.json").write_text(json.dumps({"tumor_type_accuracy": {"value": 0.8}}))
    (run / "uncertainty.json").write_text(
        json.dumps(
            {
                "conformal": {"method": "lac", "nominal_coverage": 0.9, "coverage": 0.917,
                              "mean_set_size": 1.234, "singleton_share": 0.766, "n": 12},
                "selective": {"aurc": 0.0456, "accuracy_at": {"0.80": 0.969}},
                "ood": {"threshold": 41.5, "flagged_share": 0.083},
            }
        )
    )  # fmt: skip
    html = build_report([run])
    section = html[html.index("Knowing when not to answer") :]
    for text in ("0.917", "1.234", "0.766", "0.046", "0.969", "41.500", "0.083", "80%"):
        assert text in section, text
