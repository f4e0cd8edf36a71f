"""A manifest CSV listing every slice with its patient and labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mritumor.data.reading.catalog import Catalog, Problem, make_table, normalise_grade
from mritumor.data.reading.sequences import picked_channel_sequence
from mritumor.errors import DataError


def read_manifest(path: Path) -> Catalog:
    """A CSV with ``image, mask, patient_id, tumor_type, grade`` (+ extra columns, kept).
    Relative paths are resolved against the CSV's folder. ``data_root`` may be the CSV or a
    folder holding ``manifest.csv``. A slice (image and frame) listed on several rows is kept
    once when the rows agree, and dropped altogether when they give it different patients or
    labels (it would leak between splits or carry two labels); both are reported."""
    csv_path = path / "manifest.csv" if path.is_dir() else path
    try:
        table = pd.read_csv(
            csv_path, dtype={"patient_id": str, "patient_family": str}, keep_default_na=True
        )
    except Exception as error:
        raise DataError(f"cannot read manifest {csv_path}: {error}") from error
    missing = [c for c in ("image", "patient_id", "tumor_type") if c not in table.columns]
    if missing:
        raise DataError(f"manifest {csv_path} lacks required column(s) {missing}")
    base = csv_path.parent
    problems: list[Problem] = []
    table["_line"] = np.arange(len(table)) + 2  # header is line 1
    keep = np.ones(len(table), dtype=bool)
    for column in ("image", "patient_id", "tumor_type"):
        empty = table[column].isna() | (table[column].astype(str).str.strip() == "")
        for position in np.flatnonzero(empty & keep):
            problems.append(Problem(f"{csv_path}:{position + 2}", f"empty {column}; row skipped"))
        keep &= ~empty.to_numpy()
    table = table[keep].reset_index(drop=True)
    table["image"] = [str(_resolve(base, p)) for p in table["image"]]
    if "mask" in table.columns:
        table["mask"] = [
            None if pd.isna(p) or not str(p).strip() else str(_resolve(base, p))
            for p in table["mask"]
        ]
    exists = np.array([Path(p).is_file() for p in table["image"]], dtype=bool)
    for position in np.flatnonzero(~exists):
        problems.append(Problem(table.at[position, "image"], "file not found"))
    table = table[exists].reset_index(drop=True)
    if "mask" in table.columns:
        # pandas turns the None of rows without a mask into NaN: test for text, not for None
        given = table["mask"].map(lambda p: isinstance(p, str))
        lost = given & ~table["mask"].map(lambda p: isinstance(p, str) and Path(p).is_file())
        for position in np.flatnonzero(lost.to_numpy()):
            problems.append(
                Problem(table.at[position, "mask"], "mask file not found; slice kept without mask")
            )
        table.loc[lost, "mask"] = None
    table = _drop_repeated_slices(table, csv_path, problems).drop(columns="_line")
    table["source"] = table["source"] if "source" in table.columns else "manifest"
    if "sequence" not in table.columns and "channels" in table.columns:
        # a manifest that names its images' channels (LGG: pre-contrast, FLAIR, post-contrast)
        table["sequence"] = [picked_channel_sequence(c, None) for c in table["channels"]]
    table = make_table(table.to_dict("records"))
    table = _order_within_patients(table)
    return Catalog(table, "manifest", csv_path.parent, problems)


def _drop_repeated_slices(
    table: pd.DataFrame, csv_path: Path, problems: list[Problem]
) -> pd.DataFrame:
    frame = table["frame"].fillna(-1).astype(int) if "frame" in table.columns else -1
    slice_key = table["image"].astype(str) + "|" + pd.Series(frame, index=table.index).astype(str)
    grade = table["grade"] if "grade" in table.columns else pd.Series(None, index=table.index)
    label_key = (
        table["patient_id"].astype(str).str.strip()
        + "|"
        + table["tumor_type"].astype(str).str.strip()
        + "|"
        + grade.map(lambda g: str(normalise_grade(g)))
    )
    drop = np.zeros(len(table), dtype=bool)
    for _, rows in table.groupby(slice_key, sort=False).groups.items():
        if len(rows) < 2:
            continue
        positions = table.index.get_indexer(rows)
        lines = table["_line"].to_numpy()[positions].tolist()
        image = table.at[rows[0], "image"]
        if label_key[rows].nunique() > 1:
            drop[positions] = True
            problems.append(
                Problem(
                    f"{csv_path}:{lines[0]}",
                    f"{image} is listed on lines {lines} with different patients or labels; "
                    "all these rows skipped (leakage / wrong-label risk)",
                )
            )
        else:
            drop[positions[1:]] = True
            problems.append(
                Problem(
                    f"{csv_path}:{lines[1]}",
                    f"{image} is listed again (lines {lines}); the repeats are skipped",
                )
            )
    return table[~drop].reset_index(drop=True)


def _resolve(base: Path, value) -> Path:
    path = Path(str(value).strip())
    return path if path.is_absolute() else base / path


def _order_within_patients(table: pd.DataFrame) -> pd.DataFrame:
    """Patients in order of first appearance; slices by slice_index when given, else CSV order."""
    first_seen = {p: i for i, p in reversed(list(enumerate(table["patient_id"])))}
    keys = pd.DataFrame(
        {
            "patient_rank": table["patient_id"].map(first_seen),
            "slice": table["slice_index"]
            if "slice_index" in table.columns
            else np.arange(len(table)),
            "row": np.arange(len(table)),
        }
    )
    order = keys.sort_values(["patient_rank", "slice", "row"], kind="stable").index
    return table.loc[order].reset_index(drop=True)
