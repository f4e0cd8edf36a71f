"""benchmarks/bench_loio.py: one split per institution (its patients are exactly the test part,
the others train or validate, none in two parts), resuming, and the summary against hand-worked
means and sample sds."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from mritumor.data.loading.splits import load_split
from mritumor.errors import DataError

SITES = {"AA": 4, "BB": 7, "CC": 9}  # institution → patients


@pytest.fixture(scope="module")
def bench():
    from conftest import load_benchmark

    return load_benchmark("bench_loio")


def fake_table() -> pd.DataFrame:
    """3 slices a patient; types and grades alternate so that strata exist."""
    rows = []
    for site, n in SITES.items():
        for p in range(n):
            patient = f"TCGA_{site}_{p:04d}"
            for k in range(3):
                rows.append(
                    {
                        "image": f"{patient}_{k}.png",
                        "patient_id": patient,
                        "tumor_type": ("astrocytoma", "oligodendroglioma")[p % 2],
                        "grade": ("2", "3")[p // 2 % 2],
                        "institution": site,
                    }
                )
    return pd.DataFrame(rows)


def test_each_site_is_exactly_the_test_part(bench, tmp_path):
    table = fake_table()
    files = bench.write_splits(table, tmp_path, val_frac=0.15, seed=0)
    assert sorted(files) == sorted(SITES)
    everyone = set(table["patient_id"])
    for site, path in files.items():
        assert path == tmp_path / "splits" / f"split_site_{site}.json"
        split = load_split(path, table)  # the loader train-multitask uses: rejects overlaps
        own = {p for p in everyone if p.startswith(f"TCGA_{site}_")}
        train, val, test = set(split.train), set(split.val), set(split.test)
        assert test == own
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val == everyone - own
        # sklearn rounds the held-out share up: ceil(0.15 × the other sites' patients)
        assert len(val) == math.ceil(0.15 * (len(everyone) - len(own)))
        assert split.extra == {"held_out_institution": site}
    again = bench.loio_splits(table, 0.15, 0)
    assert again["BB"].val == load_split(files["BB"], table).val  # seeded


def test_a_different_split_is_not_written_over_trained_sites(bench, tmp_path):
    table = fake_table()
    bench.write_splits(table, tmp_path, 0.15, 0)
    bench.write_splits(table, tmp_path, 0.15, 0)  # the same split: resuming is fine
    with pytest.raises(SystemExit, match="another split"):
        bench.write_splits(table, tmp_path, 0.3, 0)


def test_patient_under_two_institutions_is_an_error(bench):
    table = fake_table()
    table.loc[0, "institution"] = "BB"  # one slice of TCGA_AA_0000 at another site
    with pytest.raises(DataError, match="several institutions"):
        bench.loio_splits(table)
    with pytest.raises(DataError, match="no 'institution' column"):
        bench.loio_splits(table.drop(columns="institution"))


def test_run_site_trains_once_and_skips_finished_sites(bench, tmp_path, monkeypatch):
    calls = []

    def fake_run(command, check):
        calls.append(command)
        return argparse.Namespace(returncode=0)

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    args = argparse.Namespace(
        mritumor="mri", recipe="cpu-quick", variant="F", lgg=Path("LGG"), seed=0,
        extra_flags="--epochs 2 --num_workers 0",
    )  # fmt: skip
    (tmp_path / "site_AA").mkdir()
    (tmp_path / "site_AA" / "test_metrics.json").write_text("{}")
    assert bench.run_site("AA", tmp_path / "a.json", tmp_path, args) is None
    assert calls == []
    (tmp_path / "site_BB").mkdir()  # train-multitask makes it; the fake run does not
    seconds = bench.run_site("BB", tmp_path / "b.json", tmp_path, args)
    assert calls == [
        ["mri", "-q", "train-multitask", "--recipe", "cpu-quick", "--variant", "F",
         "--data_root", "LGG", "--split_file", str(tmp_path / "b.json"),
         "--outdir", str(tmp_path / "site_BB"), "--seed", "0", "--epochs", "2", "--num_workers", "0"]
    ]  # fmt: skip
    recorded = json.loads((tmp_path / "site_BB" / bench.TIME_FILE).read_text())["seconds"]
    assert recorded == round(seconds, 1)


def write_site(
    out: Path, site: str, metrics: dict, n: tuple[int, int], seconds: float,
    uncertainty: dict | None = None,
) -> None:  # fmt: skip
    folder = out / f"site_{site}"
    folder.mkdir(parents=True)
    (folder / "test_metrics.json").write_text(json.dumps({"variant": "F", **metrics}))
    if uncertainty is not None:
        (folder / "uncertainty.json").write_text(json.dumps(uncertainty))
    (folder / "test_report.json").write_text(json.dumps({"n_patients": n[0], "n_slices": n[1]}))
    (folder / "loio_time.json").write_text(json.dumps({"seconds": seconds}))


def ci(value, low=None, high=None) -> dict:
    return {"value": value, "low": low, "high": high}


def uncertainty(coverage: float, size: float, accuracy_at_80: float, flagged: float) -> dict:
    """The parts of a run's uncertainty.json the summary reads, in its layout."""
    return {
        "conformal": {"method": "lac", "coverage": coverage, "mean_set_size": size},
        "selective": {"accuracy_at": {"0.50": 1.0, "0.80": accuracy_at_80}},
        "ood": {"threshold": 3.0, "flagged_share": flagged},
    }


def test_summary_against_hand_worked_means_and_sds(bench, tmp_path):
    assert bench.TIME_FILE == "loio_time.json"  # the name write_site uses
    write_site(
        tmp_path, "AA",
        {"dice_tumour_slices": ci(0.6, 0.5, 0.7), "dice": ci(0.90, 0.8, 0.95),
         "empty_slices_predicted_empty": ci(0.99), "tumor_type_accuracy": ci(0.5, 0.25, 0.75),
         "tumor_type_macro_auc": ci(0.8, 0.7, 0.9), "ece_after_scaling": 0.1},
        (4, 120), 61.0,
        uncertainty(0.9, 1.5, 0.625, 0.25),
    )  # fmt: skip
    write_site(
        tmp_path, "BB",
        {"dice_tumour_slices": ci(0.7, 0.6, 0.8), "dice": ci(0.95),
         "empty_slices_predicted_empty": ci(0.97), "tumor_type_accuracy": ci(0.9, 0.8, 1.0),
         "tumor_type_macro_auc": ci(0.6), "ece_after_scaling": 0.3},
        (7, 210), 90.4,
        uncertainty(0.8, 1.1, 0.875, 0.05),
    )  # fmt: skip
    # one patient of one type: no AUC (the evaluation writes none, or a null value)
    write_site(
        tmp_path, "CC",
        {"dice_tumour_slices": ci(0.8, 0.8, 0.8), "dice": ci(0.85),
         "empty_slices_predicted_empty": ci(0.98), "tumor_type_accuracy": ci(0.7, 0.7, 0.7),
         "tumor_type_macro_auc": ci(None)},
        (1, 24), 30.0,
    )  # fmt: skip
    result = bench.summarise(tmp_path, ["AA", "BB", "CC", "DD"])  # DD: not trained yet
    assert list(result["sites"]) == ["AA", "BB", "CC"]
    assert result["sites"]["BB"]["n_patients"] == 7 and result["sites"]["BB"]["n_slices"] == 210
    assert result["sites"]["AA"]["seconds"] == 61.0
    assert result["sites"]["AA"]["dice_tumour_slices"] == ci(0.6, 0.5, 0.7)
    assert "tumor_type_macro_auc" not in result["sites"]["CC"]
    # CC: no uncertainty.json and no ECE → no such cells; the others read from the right keys
    assert not {"ece_after_scaling", "set_coverage", "ood_flagged"} & set(result["sites"]["CC"])
    assert result["sites"]["AA"]["accuracy_at_80"] == ci(0.625)
    assert result["sites"]["BB"]["set_size"] == ci(1.1)
    assert result["sites"]["BB"]["ood_flagged"] == ci(0.05)
    summary = result["summary"]
    # by hand: mean of (0.6, 0.7, 0.8) = 0.7, deviations ±0.1, 0 → sd sqrt(0.02 / 2) = 0.1
    assert summary["dice_tumour_slices"]["mean"] == pytest.approx(0.7)
    assert summary["dice_tumour_slices"]["sd"] == pytest.approx(0.1)
    # (0.5, 0.9, 0.7): mean 0.7, sd sqrt((0.04 + 0.04 + 0) / 2) = 0.2
    assert summary["tumor_type_accuracy"]["mean"] == pytest.approx(0.7)
    assert summary["tumor_type_accuracy"]["sd"] == pytest.approx(0.2)
    # (0.90, 0.95, 0.85): mean 0.9, sd 0.05; (0.99, 0.97, 0.98): mean 0.98, sd 0.01
    assert summary["dice"]["mean"] == pytest.approx(0.9)
    assert summary["dice"]["sd"] == pytest.approx(0.05)
    assert summary["empty_slices_predicted_empty"]["sd"] == pytest.approx(0.01)
    # AUC on two sites only: (0.8, 0.6): mean 0.7, sd sqrt(0.01 + 0.01) / 1 = 0.1414
    assert summary["tumor_type_macro_auc"] == {
        "mean": pytest.approx(0.7),
        "sd": pytest.approx(0.1 * math.sqrt(2)),
        "n_sites": 2,
    }
    # set coverage (0.9, 0.8): mean 0.85, sd 0.0707; ECE (0.1, 0.3): mean 0.2, sd 0.1414
    assert summary["set_coverage"]["mean"] == pytest.approx(0.85)
    assert summary["set_coverage"]["sd"] == pytest.approx(0.05 * math.sqrt(2))
    assert summary["ece_after_scaling"]["mean"] == pytest.approx(0.2)
    assert summary["ood_flagged"]["mean"] == pytest.approx(0.15)
    table = bench.markdown(result)
    lines = table.splitlines()
    assert len(lines) == 2 + 3 + 1
    assert lines[2] == (
        "| AA | 4 | 120 | 0.600 (0.500–0.700) | 0.900 | 0.990 | 0.500 (0.250–0.750) | 0.800 "
        "| 0.100 | 0.900 | 1.500 | 0.625 | 0.250 | 61 |"
    )
    assert lines[4].endswith("| 0.700 (0.700–0.700) | – | – | – | – | – | – | 30 |")
    assert lines[-1] == (
        "| mean ± sd over sites | | | 0.700 ± 0.100 | 0.900 ± 0.050 | 0.980 ± 0.010 "
        "| 0.700 ± 0.200 | 0.700 ± 0.141 | 0.200 ± 0.141 | 0.850 ± 0.071 | 1.300 ± 0.283 "
        "| 0.750 ± 0.177 | 0.150 ± 0.141 | |"
    )
