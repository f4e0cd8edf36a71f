"""Patient-level splits: train/val/test and k-fold, never a patient (or family) in two parts.

Splitting works on one row per *group* (a patient, or a coarser grouping such as Figshare's
``patient_family``), so leakage is impossible by construction. Groups are stratified on
(type, grade); when a stratum has too few groups the split falls back to type only, then to
unstratified, and logs which level it used.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from mritumor.errors import DataError

log = logging.getLogger(__name__)
STRATA = ("type+grade", "type", "none")


@dataclass
class Split:
    """Patient ids per part, with how the split was made (written as JSON into every run)."""

    train: list[str]
    val: list[str]
    test: list[str]
    strategy: str
    group_by: str = "patient_id"
    seed: int = 0
    fold: int | None = None
    extra: dict = field(default_factory=dict)

    def part(self, name: str) -> list[str]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def group_column(table: pd.DataFrame, group_by: str | None) -> str:
    """``patient_family`` when the data has it (Figshare), else ``patient_id``."""
    if group_by:
        if group_by not in table.columns:
            raise DataError(f"--group_by {group_by!r} is not a column of the catalog")
        return group_by
    return "patient_family" if "patient_family" in table.columns else "patient_id"


def group_labels(table: pd.DataFrame, group_by: str) -> pd.DataFrame:
    """One row per group: its stratification keys (most common type/grade in the group)."""
    grades = table["grade"].fillna("?")
    frame = table.assign(_grade=grades)
    per_group = frame.groupby(group_by, sort=True).agg(
        tumor_type=("tumor_type", lambda s: s.mode().iloc[0]),
        grade=("_grade", lambda s: s.mode().iloc[0]),
    )
    per_group["type+grade"] = per_group["tumor_type"] + "|" + per_group["grade"]
    per_group["type"] = per_group["tumor_type"]
    per_group["none"] = "all"
    return per_group


def make_split(
    table: pd.DataFrame,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
    group_by: str | None = None,
    within: str | None = None,
) -> Split:
    """Train/val/test by group. ``val_frac`` may be 0 (no validation part). ``within``: a
    column (``source`` for a multi-source catalog) whose every value is split on its own with
    these fractions, so each source has its own train, validation and test patients."""
    if within is not None and table[within].nunique() > 1:
        parts = [
            make_split(rows, val_frac, test_frac, seed, group_by)
            for _, rows in table.groupby(within, sort=True)
        ]
        return Split(
            train=sorted(p for part in parts for p in part.train),
            val=sorted(p for part in parts for p in part.val),
            test=sorted(p for part in parts for p in part.test),
            strategy=f"within {within}: " + ", ".join(sorted({p.strategy for p in parts})),
            group_by=parts[0].group_by,
            seed=seed,
        )
    if not (0 <= val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise DataError(
            f"fractions val={val_frac}, test={test_frac} must be in [0, 1) and sum below 1"
        )
    column = group_column(table, group_by)
    groups = group_labels(table, column)
    needed = 2 + (val_frac > 0)
    if len(groups) < needed:
        raise DataError(f"{len(groups)} {column} group(s) cannot be split into train/val/test")
    for level in STRATA:
        try:
            rest, test = _split_groups(groups, test_frac, level, seed)
            train, val = (rest, groups.iloc[:0])
            if val_frac > 0:
                train, val = _split_groups(rest, val_frac / (1 - test_frac), level, seed + 1)
            break
        except ValueError as error:  # sklearn: a stratum too small for the requested sizes
            log.info("split stratified on %s impossible (%s); falling back", level, error)
    else:  # pragma: no cover - 'none' never fails once len(groups) >= needed
        raise DataError("could not split the data")
    if level != STRATA[0]:
        log.warning("split: strata too small for type+grade stratification; used '%s'", level)
    return Split(
        train=_patients_of(table, column, train.index),
        val=_patients_of(table, column, val.index),
        test=_patients_of(table, column, test.index),
        strategy=f"stratified:{level}" if level != "none" else "unstratified",
        group_by=column,
        seed=seed,
    )


def make_folds(
    table: pd.DataFrame,
    k: int = 5,
    val_frac: float = 0.15,
    seed: int = 0,
    group_by: str | None = None,
    use_predefined: bool = True,
) -> list[Split]:
    """K folds by group; fold i tests on part i and carves validation out of the rest.
    Figshare's predefined ``fold`` column (cvind.mat) is used when present and k matches."""
    column = group_column(table, group_by)
    groups = group_labels(table, column)
    if k < 2 or k > len(groups):
        raise DataError(f"--cv {k} needs 2 ≤ k ≤ number of groups ({len(groups)})")
    assignment, level = _assign_folds(table, groups, column, k, seed, use_predefined)
    folds = []
    for fold in range(k):
        test = groups.index[assignment == fold]
        rest = groups.loc[assignment != fold]
        train, val = rest, rest.iloc[:0]
        if val_frac > 0:
            for val_level in STRATA[STRATA.index(level) if level in STRATA else 0 :]:
                try:
                    train, val = _split_groups(rest, val_frac, val_level, seed + fold)
                    break
                except ValueError:
                    continue
        folds.append(
            Split(
                train=_patients_of(table, column, train.index),
                val=_patients_of(table, column, val.index),
                test=_patients_of(table, column, test),
                strategy=f"{k}-fold:{level}",
                group_by=column,
                seed=seed,
                fold=fold,
            )
        )
    return folds


def leave_one_source_out(
    table: pd.DataFrame, val_frac: float = 0.15, seed: int = 0, group_by: str | None = None
) -> list[Split]:
    """One split per source: its every patient is the test part; the other sources' patients
    are split into training and validation within each source (``--cv_by source``)."""
    names = sorted(table["source"].astype(str).unique())
    if len(names) < 2:
        raise DataError(f"--cv_by source needs at least two sources; the data has {names}")
    folds = []
    for fold, name in enumerate(names):
        held_out = table["source"].astype(str) == name
        rest = table[~held_out]
        train, val = sorted(set(rest["patient_id"].astype(str))), []
        if val_frac > 0:
            # the validation share of each remaining source, as a train/val split of it
            parts = [
                make_split(rows, 0.0, val_frac, seed, group_by)
                for _, rows in rest.groupby("source", sort=True)
            ]
            train = sorted(p for part in parts for p in part.train)
            val = sorted(p for part in parts for p in part.test)
        folds.append(
            Split(
                train=train,
                val=val,
                test=sorted(set(table.loc[held_out, "patient_id"].astype(str))),
                strategy=f"leave-one-source-out: {name} held out",
                group_by=group_column(table, group_by),
                seed=seed,
                fold=fold,
                extra={"held_out_source": name},
            )
        )
    return folds


def _assign_folds(table, groups, column, k, seed, use_predefined) -> tuple[np.ndarray, str]:
    if use_predefined and "fold" in table.columns:
        fold_of = table.groupby(column)["fold"].agg(lambda s: sorted(set(s)))
        values = sorted({f for folds in fold_of for f in folds})
        if len(values) == k and all(len(f) == 1 for f in fold_of):
            rank = {v: i for i, v in enumerate(values)}
            return np.array([rank[fold_of[g][0]] for g in groups.index]), "predefined"
        log.warning("predefined folds ignored: they do not give %d disjoint patient folds", k)
    for level in STRATA:
        labels = groups[level].to_numpy()
        if level != "none" and np.unique(labels, return_counts=True)[1].min() < k:
            log.info("k-fold stratified on %s impossible (a stratum has < %d groups)", level, k)
            continue
        splitter = (
            KFold(k, shuffle=True, random_state=seed)
            if level == "none"
            else StratifiedKFold(k, shuffle=True, random_state=seed)
        )
        assignment = np.empty(len(groups), dtype=int)
        for fold, (_, test) in enumerate(splitter.split(labels, labels)):
            assignment[test] = fold
        if level != STRATA[0]:
            log.warning("k-fold: strata too small for type+grade; used '%s'", level)
        return assignment, level
    raise AssertionError("unreachable")


def _split_groups(groups: pd.DataFrame, fraction: float, level: str, seed: int):
    stratify = None if level == "none" else groups[level]
    return train_test_split(groups, test_size=fraction, random_state=seed, stratify=stratify)


def _patients_of(table: pd.DataFrame, column: str, group_ids) -> list[str]:
    members = table.loc[table[column].isin(set(group_ids)), "patient_id"]
    return sorted(set(members.astype(str)))


def sample_labelled_patients(
    patient_types: dict[str, str], fraction: float, seed: int = 0
) -> list[str]:
    """``fraction`` of the patients of each type (at least one per type), drawn with ``seed``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], not {fraction}")
    rng = np.random.default_rng(seed)
    chosen = []
    for tumor_type in sorted(set(patient_types.values())):
        patients = sorted(p for p, t in patient_types.items() if t == tumor_type)
        keep = max(1, round(fraction * len(patients)))
        chosen += [patients[i] for i in sorted(rng.permutation(len(patients))[:keep])]
    return sorted(chosen)


def load_split(path: str | Path, table: pd.DataFrame) -> Split:
    """A split saved by a previous run; patients absent from the data are reported."""
    try:
        data = json.loads(Path(path).read_text())
        split = Split(**data)
    except (OSError, ValueError, TypeError) as error:
        raise DataError(
            f"--split_file {path} is not a split written by mritumor: {error}"
        ) from error
    known = set(table["patient_id"].astype(str))
    listed = [p for part in ("train", "val", "test") for p in split.part(part)]
    if len(listed) != len(set(listed)):
        raise DataError(f"--split_file {path} lists a patient in two parts")
    missing = sorted(set(listed) - known)
    if missing:
        log.warning("%d patient(s) of %s are not in the data: %s", len(missing), path, missing[:5])
    unassigned = sorted(known - set(listed))
    if unassigned:
        raise DataError(
            f"{len(unassigned)} patient(s) in the data are in no part of --split_file {path} "
            f"(e.g. {unassigned[:3]}); the split does not belong to this data"
        )
    return split
