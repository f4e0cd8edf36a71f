"""The Catalog: the one table every reader returns and everything downstream consumes.

One row per 2-D slice. Columns (contract, see DESIGN.md):

* ``image``      path of the file holding the slice (PNG/JPG/TIFF/NPY, DICOM, NIfTI, .mat)
* ``frame``      index of the slice inside a multi-slice file (NIfTI axial index), -1 otherwise
* ``mask``       path of the tumour mask, or ``None``
* ``patient_id`` the patient the slice belongs to
* ``tumor_type`` tumour type (string)
* ``grade``      grade as a string (``"2"``), or ``None`` when unknown
* ``source``     which reader produced the row (``folder``, ``figshare_mat``, ``lgg_kaggle``, ``manifest``)

Optional columns kept when a source has them: ``patient_family`` (a grouping coarser than the
patient, used for splitting), ``fold`` (a predefined cross-validation fold), and any extra
manifest columns. Rows are grouped by patient and ordered by slice position within a patient,
so patient bags can take slices in anatomical order.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mritumor.errors import DataError

REQUIRED_COLUMNS = ("image", "frame", "mask", "patient_id", "tumor_type", "grade", "source")


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file or patient; the item was skipped (or is fatal under --strict)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return safe_text(f"{self.path}: {self.reason}")


def safe_text(text: str) -> str:
    """File names that are not valid UTF-8 are shown with escapes instead of crashing print."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Catalog:
    table: pd.DataFrame
    source: str
    root: Path
    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in self.table.columns]
        if missing:
            raise ValueError(f"catalog table lacks columns {missing}")

    def __len__(self) -> int:
        return len(self.table)

    @property
    def patients(self) -> list[str]:
        return list(dict.fromkeys(self.table["patient_id"]))

    @property
    def has_grades(self) -> bool:
        return bool(self.table["grade"].notna().any())

    @property
    def has_masks(self) -> bool:
        return bool(self.table["mask"].notna().any())

    def subset(self, patient_ids) -> Catalog:
        """The rows of the given patients, in catalog order."""
        keep = self.table["patient_id"].isin(set(patient_ids))
        return Catalog(self.table[keep].reset_index(drop=True), self.source, self.root, [])

    def drop_rows(self, positions, problems: list[Problem]) -> Catalog:
        """A catalog without the rows at the given positions, with their problems recorded."""
        table = self.table.drop(index=self.table.index[list(positions)]).reset_index(drop=True)
        return Catalog(table, self.source, self.root, self.problems + list(problems))

    def counts(self) -> pd.DataFrame:
        """Patients and slices per (type, grade)."""
        t = self.table.assign(grade=self.table["grade"].fillna("-"))
        return (
            t.groupby(["tumor_type", "grade"])
            .agg(patients=("patient_id", "nunique"), slices=("image", "size"))
            .reset_index()
        )


def natural_key(text: str) -> list:
    """Sort key that orders 'slice_2' before 'slice_10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def make_table(rows: list[dict], extra_columns: bool = True) -> pd.DataFrame:
    """Build the catalog table from row dicts, with the contract's dtypes."""
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in REQUIRED_COLUMNS})
    for column in REQUIRED_COLUMNS:
        if column not in table.columns:
            table[column] = None
    table["frame"] = table["frame"].fillna(-1).astype(int)
    for column in ("patient_id", "tumor_type"):
        table[column] = table[column].astype(str)
    # object columns holding None (not NaN) for "unknown": what the contract promises.
    table["grade"] = pd.Series(
        [normalise_grade(v) for v in table["grade"]], index=table.index, dtype=object
    )
    table["mask"] = pd.Series(
        [None if pd.isna(v) or v == "" else str(v) for v in table["mask"]],
        index=table.index,
        dtype=object,
    )
    ordered = list(REQUIRED_COLUMNS) + [c for c in table.columns if c not in REQUIRED_COLUMNS]
    return table[ordered] if extra_columns else table[list(REQUIRED_COLUMNS)]


def normalise_grade(value) -> str | None:
    """'2', 2, 2.0, 'g2', 'G2' → '2'; empty/NaN → None. Other text is kept as written."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    if not text or text.lower() in {"nan", "none", "na", "unknown"}:
        return None
    if text[:1] in "gG" and text[1:].isdigit():
        text = text[1:]
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def drop_conflicting_patients(table: pd.DataFrame) -> tuple[pd.DataFrame, list[Problem]]:
    """A patient listed under two tumour types (or two grades) would leak or carry a wrong label:
    all its rows are dropped and reported, never relabelled."""
    problems: list[Problem] = []
    bad: set[str] = set()
    for column in ("tumor_type", "grade"):
        labels = table.groupby("patient_id")[column].agg(lambda s: sorted(set(s.dropna())))
        for patient, values in labels.items():
            if len(values) > 1:
                first = table.loc[table["patient_id"] == patient, "image"].iloc[0]
                problems.append(
                    Problem(
                        str(first),
                        f"patient {patient!r} appears under several {column} values {values}; "
                        "all its slices are skipped (leakage / wrong-label risk)",
                    )
                )
                bad.add(patient)
    if bad:
        table = table[~table["patient_id"].isin(bad)].reset_index(drop=True)
    return table, problems


def check_not_empty(catalog: Catalog) -> None:
    if len(catalog) == 0:
        detail = "; ".join(str(p) for p in catalog.problems[:5])
        raise DataError(
            f"no usable slices found under {catalog.root} (format {catalog.source})"
            + (f"; first problems: {detail}" if detail else "")
        )


def raise_if_strict(problems: list[Problem], strict: bool) -> None:
    if strict and problems:
        listing = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} problem(s) found (--strict):\n  {listing}{more}")


def summarise_problems(problems: list[Problem]) -> str:
    """One line per reason kind, with counts, for the end-of-load summary."""
    kinds = Counter(p.reason.split(":")[0].split(" (")[0] for p in problems)
    return ", ".join(f"{n}× {kind}" for kind, n in kinds.most_common())
