"""``mritumor compare`` on fake run folders with simulated predictions: numbers against SciPy /
scikit-learn on the same aligned data, plots, refusals and dropped-unit accounting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from mritumor.cli import main
from mritumor.compare import run_names
from mritumor.evaluation.metrics import classification_report_with_ci

CLASSES = ["glioma", "meningioma", "pituitary"]
N_BOOT = "200"


def slices(n_patients: int = 24, prefix: str = "P", seed: int = 0) -> pd.DataFrame:
    """Test slices: 2–5 per patient, a type per patient; image paths are unique."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        patient = f"{prefix}{p:03d}"
        kind = CLASSES[p % len(CLASSES)]
        for k in range(int(rng.integers(2, 6))):
            rows.append({"patient_id": patient, "image": f"{kind}/{patient}/s{k}.png"})
    table = pd.DataFrame(rows)
    table["true_type"] = [CLASSES[int(p[len(prefix) :]) % 3] for p in table["patient_id"]]
    return table


def predictions(
    base: pd.DataFrame,
    skill: float,
    dice_level: float | None,
    seed: int,
    classification: bool = True,
) -> pd.DataFrame:
    """A multi-task run's predictions.csv: softmax of noise + ``skill`` on the true class, and
    Dice = dice_level + noise (NaN on about 10 % of slices: empty masks)."""
    rng = np.random.default_rng(seed)
    table = base[["patient_id", "image", "true_type"]].copy()
    if classification:
        y = table["true_type"].map(CLASSES.index).to_numpy()
        logits = rng.normal(size=(len(table), len(CLASSES)))
        logits[np.arange(len(table)), y] += skill
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        table["pred_type"] = [CLASSES[k] for k in probs.argmax(axis=1)]
        for k, name in enumerate(CLASSES):
            table[f"p_type_{name}"] = probs[:, k]
    if dice_level is not None:
        dice = np.clip(dice_level + 0.12 * rng.normal(size=len(table)), 0, 1)
        dice[rng.random(len(table)) < 0.1] = np.nan
        table["dice"] = dice
        table["iou"] = dice / (2 - dice)
        table["hd95"] = 5.0
    return table


def write_run(folder: Path, table: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "predictions.csv", index=False)
    (folder / "test_metrics.json").write_text("{}")  # other files are ignored
    return folder


def compare(tmp_path: Path, runs: list[Path], *extra: str) -> tuple[int, Path]:
    outdir = tmp_path / "cmp"
    code = main(
        ["-q", "compare", *map(str, runs), "--outdir", str(outdir), "--n_boot", N_BOOT, *extra]
    )
    return code, outdir


def pair(report: dict, a: str, b: str) -> dict:
    return next(p for p in report["pairwise"] if (p["run_a"], p["run_b"]) == (a, b))


def assert_png_not_blank(path: Path) -> None:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # more than a white canvas
    assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 20


def holm_by_hand(p: list[float]) -> list[float]:
    """Holm written out: k-th smallest times (m − k), running max, capped at 1."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p) - rank) * p[i])
        adjusted[i] = min(running, 1.0)
    return adjusted


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path, pd.DataFrame]:
    base = slices()
    a = write_run(tmp_path / "strong", predictions(base, 2.0, 0.80, seed=1))
    b = write_run(tmp_path / "weak", predictions(base, 0.8, 0.70, seed=2))
    return a, b, base


# --------------------------------------------------------------------------- two runs


def test_two_runs_numbers_equal_independent_scipy(tmp_path, two_runs, capsys):
    """Unit = image (both runs have it). McNemar p = binomtest on discordant slices, Wilcoxon
    on per-patient mean Dice = scipy.stats.wilcoxon, AUCs = roc_auc_score; every difference's
    interval contains its estimate; the JSON is strict (no NaN)."""
    a_dir, b_dir, _ = two_runs
    code, outdir = compare(tmp_path, [a_dir, b_dir])
    assert code == 0
    out = capsys.readouterr().out
    assert "strong − weak" in out and f"results in {outdir}" in out
    report = json.loads((outdir / "comparison.json").read_text(), parse_constant=_no_nan)
    assert report["unit"] == "image" and report["dropped_units"]["total"] == 0

    a = pd.read_csv(a_dir / "predictions.csv").set_index("image").sort_index()
    b = pd.read_csv(b_dir / "predictions.csv").set_index("image").sort_index()
    assert report["n_units"] == len(a) and report["n_patients"] == a["patient_id"].nunique()
    correct_a = (a["pred_type"] == a["true_type"]).to_numpy()
    correct_b = (b["pred_type"] == b["true_type"]).to_numpy()
    a_only, b_only = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    accuracy = pair(report, "strong", "weak")["accuracy"]
    assert (accuracy["a_only_correct"], accuracy["b_only_correct"]) == (a_only, b_only)
    assert accuracy["p_value"] == pytest.approx(sps.binomtest(a_only, a_only + b_only).pvalue)
    assert accuracy["difference"] == pytest.approx(correct_a.mean() - correct_b.mean())
    assert accuracy["ci_low"] <= accuracy["difference"] <= accuracy["ci_high"]
    assert accuracy["p_holm"] == pytest.approx(accuracy["p_value"])  # one pair: nothing to adjust

    dice_a = a.groupby("patient_id")["dice"].mean()
    dice_b = b.groupby("patient_id")["dice"].mean()
    dice = pair(report, "strong", "weak")["dice"]
    expected = sps.wilcoxon(dice_a, dice_b)
    assert dice["p_value"] == pytest.approx(expected.pvalue)
    assert dice["statistic"] == pytest.approx(expected.statistic)
    assert dice["difference"] == pytest.approx((dice_a - dice_b).mean())
    assert dice["ci_low"] <= dice["difference"] <= dice["ci_high"]
    assert report["summary"]["weak"]["mean_dice"]["value"] == pytest.approx(dice_b.mean())

    y = a["true_type"].map(CLASSES.index).to_numpy()
    for k, name in enumerate(CLASSES):
        per_class = pair(report, "strong", "weak")["auc_per_class"][name]
        assert per_class["a"] == pytest.approx(roc_auc_score(y == k, a[f"p_type_{name}"]))
        assert per_class["b"] == pytest.approx(roc_auc_score(y == k, b[f"p_type_{name}"]))
        assert per_class["test"].startswith("DeLong")
        z = abs(per_class["difference"]) / per_class["se"]
        assert per_class["p_value"] == pytest.approx(2 * sps.norm.sf(z))
        half_width = sps.norm.ppf(0.975) * per_class["se"]
        assert per_class["ci_high"] == pytest.approx(per_class["difference"] + half_width)
    macro = pair(report, "strong", "weak")["macro_auc"]
    probs_a = a[[f"p_type_{c}" for c in CLASSES]].to_numpy()
    assert macro["a"] == pytest.approx(roc_auc_score(y, probs_a, multi_class="ovr"))
    assert "bootstrap" in macro["test"] and macro["ci_low"] <= macro["difference"]
    assert report["friedman"] == {"accuracy": None, "dice": None}
    assert (
        "McNemar" in report["tests"]["accuracy"] and "slices as independent" in report["notes"][0]
    )


def _no_nan(constant: str):
    raise AssertionError(f"comparison.json holds {constant}, which is not JSON")


def test_two_runs_write_tables_and_plots(tmp_path, two_runs):
    """CSV: one row per metric of the pair (accuracy, macro AUC, 3 per-class AUCs, Dice);
    Markdown names the tests; both PNGs readable and not blank."""
    code, outdir = compare(tmp_path, list(two_runs[:2]))
    assert code == 0
    table = pd.read_csv(outdir / "comparison.csv")
    assert list(table["metric"]) == [
        "accuracy",
        "macro_auc",
        *(f"auc[{c}]" for c in CLASSES),
        "mean_dice",
    ]
    report = json.loads((outdir / "comparison.json").read_text())
    dice = pair(report, "strong", "weak")["dice"]
    row = table.set_index("metric").loc["mean_dice"]
    assert row["p_value"] == pytest.approx(dice["p_value"]) and row["run_a"] == "strong"
    text = (outdir / "comparison.md").read_text()
    assert "exact McNemar" in text and "Wilcoxon" in text and "DeLong" in text
    assert "| strong |" in text
    assert report["files"]["roc_overlay"] == "roc_overlay.png"
    for name in ("roc_overlay.png", "dice_per_patient_boxplot.png"):
        assert_png_not_blank(outdir / name)


def test_bootstrap_is_seeded(tmp_path):
    """Same seed, same intervals; another seed, other intervals (segmentation-only runs: one
    plot, so the test stays fast)."""
    base = slices()
    runs = [
        write_run(tmp_path / name, predictions(base, 0, level, seed=k, classification=False))
        for k, (name, level) in enumerate((("a", 0.8), ("b", 0.7)))
    ]
    intervals = []
    for seed in ("0", "0", "1"):
        code, outdir = compare(tmp_path, runs, "--seed", seed)
        report = json.loads((outdir / "comparison.json").read_text())
        intervals.append(pair(report, "a", "b")["dice"]["ci_low"])
    assert intervals[0] == intervals[1] != intervals[2]


def test_evaluate_and_compare_report_the_same_intervals(tmp_path, two_runs):
    """One bootstrap for both commands: ``mritumor compare``'s per-run accuracy and macro-AUC
    intervals equal those of evaluate's ``classification_report_with_ci`` on the same slices,
    grouped by patient, same n_boot and seed, although evaluate gets the rows in another order
    (shuffled, so patients first appear out of sorted order; compare sorts the slices)."""
    code, outdir = compare(tmp_path, list(two_runs[:2]), "--seed", "3")
    assert code == 0
    summary = json.loads((outdir / "comparison.json").read_text())["summary"]
    for folder in two_runs[:2]:
        table = pd.read_csv(folder / "predictions.csv")
        table = table.sample(frac=1.0, random_state=0).reset_index(drop=True)
        first_seen = list(dict.fromkeys(table["patient_id"]))
        assert first_seen != sorted(first_seen)  # else the old engine agreed by chance
        probs = table[[f"p_type_{c}" for c in CLASSES]].to_numpy()
        y = table["true_type"].map(CLASSES.index).to_numpy()
        intervals = classification_report_with_ci(
            y, probs, CLASSES, n_boot=int(N_BOOT), seed=3, groups=table["patient_id"]
        )["intervals"]
        for metric in ("accuracy", "macro_auc"):
            evaluated, compared = intervals[metric], summary[folder.name][metric]
            assert evaluated["n_boot_valid"] == int(N_BOOT)
            for key in ("value", "low", "high"):
                assert evaluated[key] == pytest.approx(compared[key], rel=0, abs=1e-12), metric


# --------------------------------------------------------------------------- alignment


def test_dropped_units_are_counted_and_logged(tmp_path, capsys):
    """B lacks 5 of A's slices and has 3 of its own: 8 units dropped (A 5, B 3), a warning,
    and the tests run on the shared slices only."""
    base = slices()
    extra = pd.DataFrame(
        {"patient_id": ["X1"] * 3, "image": [f"x/{k}.png" for k in range(3)], "true_type": "glioma"}
    )
    a_dir = write_run(tmp_path / "a", predictions(base, 1.5, 0.8, seed=1))
    b_table = predictions(pd.concat([base.iloc[5:], extra]), 1.0, 0.7, seed=2)
    b_dir = write_run(tmp_path / "b", b_table)
    code, outdir = compare(tmp_path, [a_dir, b_dir])  # -q: warnings still go to stderr
    assert code == 0
    assert "8 of 92 image units are not in every run" in capsys.readouterr().err
    report = json.loads((outdir / "comparison.json").read_text())
    assert report["dropped_units"]["total"] == 8
    assert report["dropped_units"]["per_run"] == {"a": 5, "b": 3}
    assert report["n_units"] == len(base) - 5
    assert pair(report, "a", "b")["accuracy"]["n"] == len(base) - 5
    assert "8 of" in (outdir / "comparison.md").read_text()


def test_refuses_runs_that_share_nothing(tmp_path, capsys):
    """Different patients (other split): exit code 2 and the reason on stderr."""
    a_dir = write_run(tmp_path / "a", predictions(slices(prefix="A"), 1.5, 0.8, seed=1))
    b_dir = write_run(tmp_path / "b", predictions(slices(prefix="B"), 1.0, 0.7, seed=2))
    code, outdir = compare(tmp_path, [a_dir, b_dir])
    assert code == 2
    assert "share no test items" in capsys.readouterr().err
    assert not (outdir / "comparison.json").exists()


def test_runs_pair_whatever_spelling_of_the_data_root_they_were_given(tmp_path):
    """A run trained with ``--data_root ../data`` stores ``/x/run/../data/...``, another with the
    absolute path ``/x/data/...``, a third through a symbolic link: one image each, all paired."""
    data = tmp_path / "data"
    (tmp_path / "link").symlink_to(data, target_is_directory=True)
    base = slices()
    spellings = {
        "relative": str(tmp_path / "main" / ".." / "data") + "/",
        "absolute": str(data) + "/",
        "linked": str(tmp_path / "link") + "/",
    }
    runs = []
    for seed, (name, root) in enumerate(spellings.items()):
        table = predictions(base, 1.5, 0.8, seed=seed)
        table["image"] = root + table["image"]
        runs.append(write_run(tmp_path / name, table))
    code, outdir = compare(tmp_path, runs)
    assert code == 0
    report = json.loads((outdir / "comparison.json").read_text())
    assert report["n_units"] == len(base) and report["dropped_units"]["total"] == 0


def test_refuses_other_class_sets_missing_predictions_and_one_run(tmp_path, capsys):
    """Different p_type_* columns, a folder without predictions.csv, or a single run: exit 2
    with a message naming the problem."""
    base = slices()
    a_dir = write_run(tmp_path / "a", predictions(base, 1.5, 0.8, seed=1))
    other = predictions(base, 1.0, 0.7, seed=2).rename(columns={"p_type_glioma": "p_type_other"})
    b_dir = write_run(tmp_path / "b", other)
    assert compare(tmp_path, [a_dir, b_dir])[0] == 2
    assert "different tumour types" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert compare(tmp_path, [a_dir, empty])[0] == 2
    assert "no predictions.csv" in capsys.readouterr().err
    assert compare(tmp_path, [a_dir])[0] == 2
    assert "at least two" in capsys.readouterr().err


# --------------------------------------------------------------------------- three runs


def test_three_runs_friedman_and_holm(tmp_path):
    """Friedman on per-patient accuracy and per-patient Dice = scipy.friedmanchisquare on the
    same matrices; p_holm = Holm (by hand) of the three pairwise McNemar / Wilcoxon p-values."""
    base = slices(n_patients=30)
    dirs = [
        write_run(tmp_path / name, predictions(base, skill, dice, seed=s))
        for name, skill, dice, s in (("r1", 2.0, 0.8, 1), ("r2", 1.0, 0.72, 2), ("r3", 0.3, 0.7, 3))
    ]
    code, outdir = compare(tmp_path, dirs)
    assert code == 0
    report = json.loads((outdir / "comparison.json").read_text())
    tables = [pd.read_csv(d / "predictions.csv") for d in dirs]
    accuracy = np.column_stack(
        [
            (t["pred_type"] == t["true_type"]).groupby(t["patient_id"]).mean().sort_index()
            for t in tables
        ]
    )
    dice = np.column_stack([t.groupby("patient_id")["dice"].mean().sort_index() for t in tables])
    friedman = report["friedman"]
    assert friedman["accuracy"]["p_value"] == pytest.approx(
        sps.friedmanchisquare(*accuracy.T).pvalue
    )
    assert friedman["dice"]["statistic"] == pytest.approx(sps.friedmanchisquare(*dice.T).statistic)
    assert friedman["dice"]["runs"] == ["r1", "r2", "r3"]
    pairs = [("r1", "r2"), ("r1", "r3"), ("r2", "r3")]
    assert [(p["run_a"], p["run_b"]) for p in report["pairwise"]] == pairs
    for metric in ("accuracy", "dice", "macro_auc"):
        raw = [pair(report, a, b)[metric]["p_value"] for a, b in pairs]
        adjusted = [pair(report, a, b)[metric]["p_holm"] for a, b in pairs]
        assert adjusted == pytest.approx(holm_by_hand(raw))
    rows = pd.read_csv(outdir / "comparison.csv")
    assert {"friedman_accuracy", "friedman_dice"} <= set(rows["metric"])
    assert "Friedman" in (outdir / "comparison.md").read_text()


# --------------------------------------------------------------------------- mixed runs


def hierarchical_predictions(base: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A train-hierarchical predictions.csv: one row per patient, with grade columns."""
    rng = np.random.default_rng(seed)
    patients = base.groupby("patient_id")["true_type"].first()
    y = patients.map(CLASSES.index).to_numpy()
    logits = rng.normal(size=(len(patients), 3))
    logits[np.arange(len(patients)), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    table = pd.DataFrame({"patient_id": patients.index, "true_type": patients.to_numpy()})
    table["pred_type"] = [CLASSES[k] for k in probs.argmax(axis=1)]
    for k, name in enumerate(CLASSES):
        table[f"p_type_{name}"] = probs[:, k]
    table["true_grade"], table["pred_grade_e2e"] = "2", "2"
    table["p_grade_2"], table["top_slice_weight"] = 1.0, 0.5
    table.loc[0, "true_type"] = None  # an unknown type: left out of the classification tests
    return table


def test_hierarchical_vs_multitask_pairs_patients_and_lists_skipped(tmp_path):
    """A per-patient hierarchical run, a multi-task run and a segmentation-only run: unit =
    patient_id, slice rows averaged to patients (AUC = roc_auc_score on mean probabilities),
    a patient of unknown type left out of classification, the segmentation-only run skipped
    for classification and the hierarchical run (no Dice) for Dice."""
    base = slices()
    hier = write_run(tmp_path / "hier", hierarchical_predictions(base, seed=4))
    multi_table = predictions(base, 1.0, 0.75, seed=5)
    unknown = multi_table["patient_id"] == hierarchical_predictions(base, 4)["patient_id"][0]
    multi_table.loc[unknown, "true_type"] = None  # unknown in every run
    multi = write_run(tmp_path / "multi", multi_table)
    seg = write_run(tmp_path / "seg", predictions(base, 0, 0.8, seed=6, classification=False))
    code, outdir = compare(tmp_path, [hier, multi, seg])
    assert code == 0
    report = json.loads((outdir / "comparison.json").read_text())
    assert report["unit"] == "patient_id" and report["n_units"] == base["patient_id"].nunique()
    assert report["dropped_units"]["aggregated_to_patients"] == ["multi", "seg"]
    assert report["n_units_known_type"] == report["n_units"] - 1
    assert {s["run"] for s in report["skipped"]["classification"]} == {"seg"}
    assert {s["run"] for s in report["skipped"]["dice"]} == {"hier"}
    assert report["friedman"] == {"accuracy": None, "dice": None}

    multi_table = pd.read_csv(multi / "predictions.csv")
    columns = [f"p_type_{c}" for c in CLASSES]
    mean_probs = multi_table.groupby("patient_id")[columns].mean().sort_index()
    truth = hierarchical_predictions(base, seed=4).set_index("patient_id").sort_index()
    known = truth["true_type"].notna().to_numpy()
    y = truth["true_type"][known].map(CLASSES.index).to_numpy()
    entry = pair(report, "hier", "multi")
    expected = roc_auc_score(y, mean_probs.to_numpy()[known], multi_class="ovr")
    assert entry["macro_auc"]["b"] == pytest.approx(expected)
    correct = mean_probs.to_numpy()[known].argmax(axis=1) == y
    assert entry["accuracy"]["b"] == pytest.approx(correct.mean())
    assert entry["accuracy"]["n"] == known.sum()
    assert "dice" not in entry and set(pair(report, "multi", "seg")) == {"run_a", "run_b", "dice"}


def test_segmentation_only_runs_compare_dice_only(tmp_path):
    """Two runs without classification columns: Dice tests, no ROC overlay, classification
    skipped for both."""
    base = slices()
    a = write_run(tmp_path / "a", predictions(base, 0, 0.8, seed=1, classification=False))
    b = write_run(tmp_path / "b", predictions(base, 0, 0.7, seed=2, classification=False))
    code, outdir = compare(tmp_path, [a, b])
    assert code == 0
    report = json.loads((outdir / "comparison.json").read_text())
    assert set(pair(report, "a", "b")) == {"run_a", "run_b", "dice"}
    assert len(report["skipped"]["classification"]) == 2
    assert not (outdir / "roc_overlay.png").exists()
    assert_png_not_blank(outdir / "dice_per_patient_boxplot.png")
    assert math.isfinite(pair(report, "a", "b")["dice"]["p_value"])


def test_duplicate_folder_names_get_their_parent(tmp_path):
    """Two folders called 'run' are told apart by their parent folder."""
    assert run_names([tmp_path / "x" / "run", tmp_path / "y" / "run", tmp_path / "z"]) == [
        "x/run",
        "y/run",
        "z",
    ]


def test_pairwise_table_fixed_decimals_but_small_p_values_kept():
    """Differences and bounds read as 3 decimals (-0.001, not -0.000862); a p-value below 0.001
    keeps its significant digits (2.1e-05, not 0.000), the Holm one too."""
    from mritumor.compare.tables import pairwise_table

    entry = {
        "a": 0.9831, "b": 0.9532, "difference": 0.0299, "ci_low": -0.000862, "ci_high": 0.0604,
        "test": "DeLong (two correlated ROC curves)", "p_value": 2.1e-05, "p_holm": 0.0571,
        "significant": False,
    }  # fmt: skip
    report = {"pairwise": [{"run_a": "D", "run_b": "E", "auc_per_class": {"glioma": entry}}]}
    row = pairwise_table(report)[2]
    assert row == (
        "| D | E | auc[glioma] | 0.983 | 0.953 | 0.030 (-0.001 to 0.060) | DeLong | 2.1e-05 | 0.057 |"
    )
