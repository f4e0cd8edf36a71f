r"""Leave-one-institution-out (LOIO) on LGG: how a multi-task model does at a site it never saw
(robustness benchmark).

Protocol. The LGG manifest's ``institution`` column (TCGA site code, kept in the catalog as an
extra manifest column) gives each patient's site. For each site S, one training run:
* test: every patient of S;
* validation: 15 % of the other sites' patients (``--val_frac``), by patient, stratified on
  type+grade (type, then none, when strata are too small: ``make_split``'s fallback), seeded;
* train: the rest of the other sites' patients.
The split is written in the project's split-file format (``OUT/splits/split_site_S.json``,
like ``mritumor data split --cv``'s ``split_foldK.json``) and trained with
``mritumor -q train-multitask --recipe RECIPE --variant F --data_root LGG --split_file SPLIT
--outdir OUT/site_S --seed 0 EXTRA_FLAGS``, one site after another, timed. A site whose
``OUT/site_S/test_metrics.json`` exists is not trained again, so an interrupted run resumes.

Summary (``OUT/loio.json`` and a Markdown table): per held-out site, the test patients and
slices, tumour-slice Dice (95 % interval, bootstrap over patients), Dice over all slices, the
share of tumour-free slices predicted empty, slice type accuracy (95 % interval), macro AUC when
the run reports it, the temperature-scaled ECE, the coverage and mean size of the 90 % conformal
type sets (calibrated on the other sites' validation patients), the accuracy when answering the
80 % most confident slices, the share flagged out of distribution (threshold from the validation
patients: a site unlike the others shows up as a share well above 5 %), and the wall time; then the mean ± sample sd (n − 1) over sites, each site
weighing the same whatever its size. In this copy of LGG one site (EZ) has a single patient
(24 slices, one tumour type): its intervals collapse to the point value and it has no macro
AUC, yet it counts as one site in the means.

Usage (2 cores: nothing else running):
    python benchmarks/bench_loio.py --lgg ../shared/data/lgg --out runs/bench/loio \
        [--recipe cpu-quick] [--variant F] [--extra_flags "--epochs 8"] [--summarise_only]
Training runs with this script's interpreter (``python -m mritumor.cli``; ``--mritumor
.venv/bin/mritumor`` to choose another). ``--summarise_only`` writes the splits and the summary
of the sites trained so far, without training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from mritumor.data.loading.splits import Split, make_split
from mritumor.data.reading.readers import read_catalog
from mritumor.errors import DataError

TIME_FILE = "loio_time.json"  # the wall time of the site's training run, written by this script
# test_metrics.json key → column of the table; each value is {"value", "low", "high"}
METRICS = {
    "dice_tumour_slices": "Dice, tumour slices",
    "dice": "Dice, all slices",
    "empty_slices_predicted_empty": "empty → empty",
    "tumor_type_accuracy": "type accuracy",
    "tumor_type_macro_auc": "macro AUC",
    "ece_after_scaling": "ECE",
    "set_coverage": "90 % set coverage",
    "set_size": "set size",
    "accuracy_at_80": "acc@80 % coverage",
    "ood_flagged": "OOD flagged",
}
# the keys that are plain numbers in a run's JSON files, not {"value", "low", "high"}:
# key → (file, path of keys inside it); the conformal level is the training's --coverage (0.9)
POINT_VALUES = {
    "ece_after_scaling": ("test_metrics.json", ("ece_after_scaling",)),
    "set_coverage": ("uncertainty.json", ("conformal", "coverage")),
    "set_size": ("uncertainty.json", ("conformal", "mean_set_size")),
    "accuracy_at_80": ("uncertainty.json", ("selective", "accuracy_at", "0.80")),
    "ood_flagged": ("uncertainty.json", ("ood", "flagged_share")),
}
WITH_INTERVAL = ("dice_tumour_slices", "tumor_type_accuracy")


def patient_institutions(table: pd.DataFrame) -> pd.Series:
    """patient_id → institution; a patient listed under two sites is an error, not a guess."""
    if "institution" not in table.columns:
        raise DataError("the catalog has no 'institution' column (LGG's manifest.csv has one)")
    sites = table.groupby("patient_id")["institution"].agg(lambda s: sorted(set(s.astype(str))))
    mixed = sites[sites.map(len) != 1]
    if len(mixed):
        raise DataError(f"patients under several institutions: {dict(mixed.head(3))}")
    return sites.map(lambda s: s[0])


def loio_splits(table: pd.DataFrame, val_frac: float = 0.15, seed: int = 0) -> dict[str, Split]:
    """One split per institution: test = its patients, train/val = the other sites' patients."""
    site_of = patient_institutions(table)
    splits = {}
    for site in sorted(set(site_of)):
        test = sorted(site_of.index[site_of == site])
        rest = table[~table["patient_id"].isin(test)]
        # make_split's test part, asked for val_frac of the rest, is our validation part: it
        # brings the project's by-patient stratification and its fallbacks
        inner = make_split(rest, val_frac=0, test_frac=val_frac, seed=seed, group_by="patient_id")
        splits[site] = Split(
            train=inner.train,
            val=inner.test,
            test=test,
            strategy=f"leave-one-institution-out:{site}; val {inner.strategy}",
            group_by="patient_id",
            seed=seed,
            extra={"held_out_institution": site},
        )
    return splits


def write_splits(table: pd.DataFrame, out: Path, val_frac: float, seed: int) -> dict[str, Path]:
    """OUT/splits/split_site_S.json; a different split already there (other --seed or
    --val_frac) is an error, since the sites trained on it would not match."""
    files = {}
    for site, split in loio_splits(table, val_frac, seed).items():
        path = out / "splits" / f"split_site_{site}.json"
        if path.is_file() and json.loads(path.read_text()) != asdict(split):
            raise SystemExit(f"{path} holds another split; use another --out or remove it")
        files[site] = split.save(path)
    return files


def run_site(site: str, split_file: Path, out: Path, args) -> float | None:
    """Train and test on one held-out site; None when its test_metrics.json already exists."""
    outdir = out / f"site_{site}"
    if (outdir / "test_metrics.json").is_file():
        print(f"site {site}: done already, skipped", flush=True)
        return None
    command = shlex.split(args.mritumor) + [
        "-q", "train-multitask", "--recipe", args.recipe, "--variant", args.variant,
        "--data_root", str(args.lgg), "--split_file", str(split_file), "--outdir", str(outdir),
        "--seed", str(args.seed), *shlex.split(args.extra_flags),
    ]  # fmt: skip
    print(f"site {site}: {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    finished = subprocess.run(command, check=False)
    seconds = time.perf_counter() - start
    if finished.returncode != 0:
        raise SystemExit(f"site {site}: training failed (exit {finished.returncode})")
    (outdir / TIME_FILE).write_text(json.dumps({"seconds": round(seconds, 1)}))
    print(f"site {site}: {seconds:.0f} s", flush=True)
    return seconds


def point_value(file: Path, path: tuple[str, ...]) -> float | None:
    """The number at PATH inside the JSON FILE; None when the file or a key is missing (a run
    without a conformal state writes no uncertainty.json)."""
    if not file.is_file():
        return None
    value = json.loads(file.read_text())
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, (int, float)) else None


def summarise(out: Path, sites: list[str]) -> dict:
    """Per-site rows from OUT/site_S/{test_metrics,test_report,loio_time}.json and the mean ±
    sample sd over the sites that have the metric (a site not yet trained is left out)."""
    rows = {}
    for site in sites:
        folder = out / f"site_{site}"
        if not (folder / "test_metrics.json").is_file():
            continue
        metrics = json.loads((folder / "test_metrics.json").read_text())
        report_file, time_file = folder / "test_report.json", folder / TIME_FILE
        report = json.loads(report_file.read_text()) if report_file.is_file() else {}
        timing = json.loads(time_file.read_text()) if time_file.is_file() else {}
        row: dict = {
            "n_patients": report.get("n_patients"),
            "n_slices": report.get("n_slices"),
            "seconds": timing.get("seconds"),
        }
        for key in METRICS:
            entry = metrics.get(key)
            if isinstance(entry, dict) and entry.get("value") is not None:
                row[key] = {k: entry.get(k) for k in ("value", "low", "high")}
        for key, (name, path) in POINT_VALUES.items():
            value = point_value(folder / name, path)
            if value is not None:
                row[key] = {"value": value, "low": None, "high": None}
        rows[site] = row
    summary = {}
    for key in METRICS:
        values = [row[key]["value"] for row in rows.values() if key in row]
        if len(values) >= 2:
            summary[key] = {"mean": statistics.mean(values), "sd": statistics.stdev(values), "n_sites": len(values)}  # fmt: skip
    return {"sites": rows, "summary": summary}


def markdown(result: dict) -> str:
    def cell(row: dict, key: str) -> str:
        if key not in row:
            return "–"
        entry = row[key]
        if key in WITH_INTERVAL and entry["low"] is not None and entry["high"] is not None:
            return f"{entry['value']:.3f} ({entry['low']:.3f}–{entry['high']:.3f})"
        return f"{entry['value']:.3f}"

    def count(value) -> str:
        return "–" if value is None else f"{value:.0f}"

    head = ["held-out site", "patients", "slices", *METRICS.values(), "wall (s)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for site, row in result["sites"].items():
        cells = [site, count(row["n_patients"]), count(row["n_slices"])]
        cells += [cell(row, key) for key in METRICS] + [count(row["seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    summary = result["summary"]
    means = [
        f"{summary[k]['mean']:.3f} ± {summary[k]['sd']:.3f}" if k in summary else "–"
        for k in METRICS
    ]
    lines.append("| mean ± sd over sites | | | " + " | ".join(means) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lgg", type=Path, default=Path("../shared/data/lgg"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/loio"))
    parser.add_argument("--recipe", default="cpu-quick")
    parser.add_argument("--variant", default="F")
    parser.add_argument("--extra_flags", default="", help="more train-multitask flags, one string")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val_frac", type=float, default=0.15)
    parser.add_argument("--mritumor", default=f"{shlex.quote(sys.executable)} -m mritumor.cli")
    parser.add_argument("--summarise_only", action="store_true", help="no training")
    args = parser.parse_args(argv)
    table = read_catalog(args.lgg).table
    split_files = write_splits(table, args.out, args.val_frac, args.seed)
    if not args.summarise_only:
        for site, split_file in split_files.items():
            run_site(site, split_file, args.out, args)
    result = summarise(args.out, list(split_files))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()  # fmt: skip
    document = {
        "protocol": "leave-one-institution-out on LGG (see benchmarks/bench_loio.py)",
        "command": shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "recipe": args.recipe,
        "variant": args.variant,
        "extra_flags": args.extra_flags,
        "commit": commit,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        **result,
    }
    (args.out / "loio.json").write_text(json.dumps(document, indent=2))
    print(markdown(result))
    return document


if __name__ == "__main__":
    main()
