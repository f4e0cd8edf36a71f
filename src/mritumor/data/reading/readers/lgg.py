"""TCGA-LGG as released by Buda et al. on Kaggle (``kaggle_3m``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mritumor.data.reading.catalog import Catalog, Problem, make_table, natural_key
from mritumor.data.reading.sequences import picked_channel_sequence
from mritumor.errors import DataError

LGG_TYPES = {1: "astrocytoma", 2: "oligoastrocytoma", 3: "oligodendroglioma"}
# the three channels of every kaggle_3m image, in order (its README: pre-contrast, FLAIR,
# post-contrast)
LGG_CHANNELS = "pre-contrast,FLAIR,post-contrast"
LGG_GRADES = {1: "2", 2: "3"}  # data.csv neoplasm_histologic_grade code → WHO grade


def find_lgg_cases(root: Path) -> list[Path]:
    for base in (root, root / "kaggle_3m"):
        if base.is_dir():
            cases = [d for d in base.iterdir() if d.is_dir() and d.name.startswith("TCGA_")]
            if cases:
                return sorted(cases, key=lambda d: d.name)
    return []


def read_lgg_kaggle(root: Path) -> Catalog:
    """Buda et al. ``kaggle_3m``: case folders of ``<case>_<n>.tif`` + ``<case>_<n>_mask.tif``
    and ``data.csv`` (histological_type 1/2/3, neoplasm_histologic_grade 1→G2, 2→G3)."""
    cases = find_lgg_cases(root)
    if not cases:
        raise DataError(f"no TCGA_* case folders under {root} or {root / 'kaggle_3m'}")
    csv_path = next(
        (p for p in (root / "data.csv", cases[0].parent / "data.csv") if p.is_file()), None
    )
    if csv_path is None:
        raise DataError(f"data.csv (per-patient type and grade) not found in {root}")
    labels = _read_lgg_labels(csv_path)
    rows, problems = [], []
    for case in cases:
        patient = "_".join(case.name.split("_")[:3])
        if patient not in labels.index:
            problems.append(
                Problem(str(case), f"patient {patient} not in data.csv; no label, skipped")
            )
            continue
        entries = labels.loc[[patient]].drop_duplicates()
        if len(entries) > 1:
            problems.append(
                Problem(
                    str(case),
                    f"patient {patient} has {len(entries)} different rows in data.csv; "
                    "which label is right is unknown, skipped",
                )
            )
            continue
        type_code = _lgg_code(entries["histological_type"].iloc[0])
        grade_code = _lgg_code(entries["neoplasm_histologic_grade"].iloc[0])
        if type_code not in LGG_TYPES:
            problems.append(
                Problem(
                    str(case),
                    f"unknown histological_type {entries['histological_type'].iloc[0]!r} in "
                    "data.csv; skipped",
                )
            )
            continue
        raw_grade = entries["neoplasm_histologic_grade"].iloc[0]
        if not pd.isna(raw_grade) and grade_code not in LGG_GRADES:
            problems.append(
                Problem(
                    str(case),
                    f"unknown neoplasm_histologic_grade {raw_grade!r} in data.csv; skipped",
                )
            )
            continue
        grade = LGG_GRADES.get(grade_code) if grade_code is not None else None
        for image in sorted(case.glob("*.tif"), key=lambda p: natural_key(p.name)):
            if image.stem.endswith("_mask"):
                continue
            mask = image.with_name(f"{image.stem}_mask.tif")
            slice_number = image.stem.rsplit("_", 1)[-1]
            rows.append(
                {
                    "image": str(image),
                    "frame": -1,
                    "mask": str(mask) if mask.is_file() else None,
                    "patient_id": patient,
                    "tumor_type": LGG_TYPES[type_code],
                    "grade": grade,
                    "source": "lgg_kaggle",
                    "channels": LGG_CHANNELS,
                    "case_id": case.name,
                    "slice_index": int(slice_number) if slice_number.isdigit() else -1,
                }
            )
    for row in rows:
        row["sequence"] = picked_channel_sequence(LGG_CHANNELS, None)
    return Catalog(make_table(rows), "lgg_kaggle", root, problems)


def _read_lgg_labels(csv_path: Path) -> pd.DataFrame:
    """data.csv indexed by patient; an unreadable file or missing columns is a clear error."""
    try:
        table = pd.read_csv(csv_path)
    except Exception as error:  # pandas raises parser, encoding and empty-data errors
        raise DataError(f"cannot read {csv_path}: {error}") from error
    needed = ["Patient", "histological_type", "neoplasm_histologic_grade"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path} lacks column(s) {missing} (the kaggle_3m data.csv has them)")
    table = table[needed].copy()
    table["Patient"] = table["Patient"].astype(str).str.strip()
    return table.set_index("Patient")


def _lgg_code(value) -> int | None:
    """An integer code from data.csv (1, 1.0, '1'), or None when empty or not a whole number;
    a code that is not one of the known ones is never guessed."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None
