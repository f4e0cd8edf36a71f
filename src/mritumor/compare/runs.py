"""Reading run folders (their ``predictions.csv``) and pairing them on their shared units."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mritumor import runfiles
from mritumor.errors import MritumorError

log = logging.getLogger(__package__)  # 'mritumor.compare', as before the split

PREDICTIONS = runfiles.PREDICTIONS
PROB_PREFIX = "p_type_"


# --------------------------------------------------------------------------- reading runs


@dataclass
class Run:
    """One run folder's predictions and what they allow."""

    name: str
    path: Path
    table: pd.DataFrame
    class_names: list[str] | None  # from the p_type_* columns; None: no classification
    has_dice: bool
    aggregated: bool = False  # slice rows averaged to patients

    @property
    def has_classification(self) -> bool:
        return self.class_names is not None


def run_names(paths: Sequence[Path]) -> list[str]:
    """Folder names; duplicates become ``parent/name`` (and ``#k`` if that is not enough)."""
    paths = [Path(p).resolve() for p in paths]
    names = [p.name for p in paths]
    duplicated = {n for n in names if names.count(n) > 1}
    names = [f"{p.parent.name}/{p.name}" if p.name in duplicated else p.name for p in paths]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if names.count(name) == 1 else f"{name}#{seen[name]}")
    return unique


def read_run(path: Path, name: str) -> Run:
    """The run's predictions.csv, its class names and whether it has Dice."""
    csv = Path(path) / PREDICTIONS
    if not csv.is_file():
        raise MritumorError(
            f"{path}: no {PREDICTIONS} (give run folders of train-hierarchical or train-multitask)"
        )
    table = pd.read_csv(csv)
    if "patient_id" not in table.columns:
        raise MritumorError(f"{csv}: no patient_id column")
    table["patient_id"] = table["patient_id"].astype(str)
    if "image" in table.columns:
        table["image"] = [_image_key(image) for image in table["image"].astype(str)]
    probs = [c[len(PROB_PREFIX) :] for c in table.columns if c.startswith(PROB_PREFIX)]
    classification = bool(probs) and "true_type" in table.columns
    return Run(
        name=name,
        path=Path(path),
        table=table,
        class_names=probs if classification else None,
        has_dice="dice" in table.columns,
    )


def _image_key(image: str) -> str:
    """One spelling per image file, so that runs pair whatever path their data root was given
    as: ``/work/main/../shared/data/x.png`` (a relative ``--data_root``, resolved at training)
    and ``/work/shared/data/x.png`` are one image; an absolute path is also resolved through
    symbolic links (CI's ``../shared`` is one). A relative one is only normalised: it names no
    file on this machine for sure."""
    return os.path.realpath(image) if os.path.isabs(image) else os.path.normpath(image)


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    if len(paths) < 2:
        raise MritumorError("compare needs at least two run folders")
    runs = [read_run(Path(p), n) for p, n in zip(paths, run_names(paths), strict=True)]
    _check_class_sets(runs)
    if sum(r.has_classification for r in runs) < 2 and sum(r.has_dice for r in runs) < 2:
        kinds = ", ".join(f"{r.name}: {_kind(r)}" for r in runs)
        raise MritumorError(
            "nothing to compare: fewer than two runs have classification columns "
            f"(true_type, p_type_*) and fewer than two have a dice column ({kinds})"
        )
    return runs


def _kind(run: Run) -> str:
    parts = (["classification"] if run.has_classification else []) + (
        ["dice"] if run.has_dice else []
    )
    return " + ".join(parts) or "neither classification nor dice"


def _check_class_sets(runs: list[Run]) -> None:
    classified = [r for r in runs if r.has_classification]
    if not classified:
        return
    reference = classified[0]
    for run in classified[1:]:
        if set(run.class_names) != set(reference.class_names):
            raise MritumorError(
                f"runs predict different tumour types: {reference.name} has "
                f"{sorted(reference.class_names)}, {run.name} has {sorted(run.class_names)}"
            )
        run.class_names = list(reference.class_names)  # one column order for all


# --------------------------------------------------------------------------- aligning


@dataclass
class Aligned:
    """Every run's values on the units all runs share, in one unit order."""

    unit: str  # 'image' or 'patient_id'
    units: np.ndarray  # (N,) unit keys
    patients: np.ndarray  # (N,) patient of each unit (the bootstrap clusters)
    class_names: list[str]
    truth: np.ndarray  # (N,) class index, -1 unknown
    probs: dict[str, np.ndarray] = field(default_factory=dict)  # run -> (N, K)
    preds: dict[str, np.ndarray] = field(default_factory=dict)  # run -> (N,)
    dice: dict[str, np.ndarray] = field(default_factory=dict)  # run -> (N,)
    dropped: dict = field(default_factory=dict)


def _aggregate_to_patients(run: Run) -> Run:
    """Slice rows → one row per patient: mean probabilities, mean defined Dice."""
    table = run.table
    if not table["patient_id"].duplicated().any():
        return run
    grouped = table.groupby("patient_id", sort=False)
    columns: dict[str, pd.Series] = {}
    if run.has_classification:
        truths = grouped["true_type"].nunique()
        if (truths > 1).any():
            raise MritumorError(
                f"{run.name}: patient {truths[truths > 1].index[0]} has slices of several types"
            )
        columns["true_type"] = grouped["true_type"].first()
        for name in run.class_names:
            columns[PROB_PREFIX + name] = grouped[PROB_PREFIX + name].mean()
    if run.has_dice:
        columns["dice"] = grouped["dice"].mean()  # pandas' mean skips NaN
    aggregated = pd.DataFrame(columns).reset_index()
    return Run(run.name, run.path, aggregated, run.class_names, run.has_dice, aggregated=True)


def _indexed(run: Run, unit: str) -> pd.DataFrame:
    duplicated = run.table[unit].duplicated()
    if duplicated.any():
        raise MritumorError(
            f"{run.name}: {unit} {run.table[unit][duplicated].iloc[0]!r} appears more than once"
        )
    return run.table.set_index(unit)


def _shared_units(runs: list[Run], tables: list[pd.DataFrame], unit: str) -> pd.Index:
    union = pd.Index(sorted(set().union(*(t.index for t in tables))))
    shared = union
    for table in tables:
        shared = shared.intersection(table.index)
    if len(shared) == 0:
        counts = ", ".join(
            f"{r.name}: {len(t)} (e.g. {t.index[0]!r})" if len(t) else f"{r.name}: none"
            for r, t in zip(runs, tables, strict=True)
        )
        raise MritumorError(
            f"the runs share no test items (unit of pairing: {unit}); {counts}. "
            "Were they evaluated on the same split?"
        )
    return shared.sort_values()


def _class_indices(values: pd.Series, class_names: list[str], what: str) -> np.ndarray:
    index = {name: k for k, name in enumerate(class_names)}
    known = values.notna()
    unknown = sorted(set(values[known].astype(str)) - set(index))
    if unknown:
        raise MritumorError(f"{what} has types {unknown} that are not among {class_names}")
    return np.array([index[str(v)] if ok else -1 for v, ok in zip(values, known, strict=True)])


def _combined_truth(runs, tables, class_names) -> np.ndarray:
    truth = None
    for run, table in zip(runs, tables, strict=True):
        if not run.has_classification:
            continue
        labels = _class_indices(table["true_type"], class_names, f"{run.name} true_type")
        if truth is None:
            truth = labels
            continue
        conflict = (truth >= 0) & (labels >= 0) & (truth != labels)
        if conflict.any():
            raise MritumorError(
                f"{run.name} disagrees with the other runs on true_type for "
                f"{int(conflict.sum())} shared item(s), e.g. {table.index[conflict][0]!r}"
            )
        truth = np.where(truth >= 0, truth, labels)
    return truth


def _check_patients(runs, tables, unit) -> np.ndarray:
    patients = tables[0]["patient_id"].to_numpy(dtype=str) if unit == "image" else None
    if patients is None:
        return tables[0].index.to_numpy(dtype=str)
    for run, table in zip(runs[1:], tables[1:], strict=True):
        differs = table["patient_id"].to_numpy(dtype=str) != patients
        if differs.any():
            raise MritumorError(
                f"{run.name} gives another patient_id for image {table.index[differs][0]!r}"
            )
    return patients


def _predictions(run: Run, table: pd.DataFrame, probs: np.ndarray, class_names) -> np.ndarray:
    """The run's pred_type (arg-max of the probabilities where it is absent or aggregated)."""
    argmax = probs.argmax(axis=1)
    if run.aggregated or "pred_type" not in table.columns:
        return argmax
    preds = _class_indices(table["pred_type"], class_names, f"{run.name} pred_type")
    return np.where(preds >= 0, preds, argmax)


def align(runs: list[Run]) -> Aligned:
    """Pair the runs on the units they all have; count and log the units dropped."""
    unit = "image" if all("image" in r.table.columns for r in runs) else "patient_id"
    if unit == "patient_id":
        runs = [_aggregate_to_patients(r) for r in runs]
    indexed = [_indexed(r, unit) for r in runs]
    shared = _shared_units(runs, indexed, unit)
    union = set().union(*(t.index for t in indexed))
    dropped = {
        "n_units_union": len(union),
        "total": len(union) - len(shared),
        "per_run": {
            r.name: int(len(t.index.difference(shared))) for r, t in zip(runs, indexed, strict=True)
        },
        "aggregated_to_patients": [r.name for r in runs if r.aggregated],
    }
    if dropped["total"]:
        log.warning(
            "%d of %d %s units are not in every run and were dropped (per run: %s)",
            dropped["total"],
            len(union),
            unit,
            dropped["per_run"],
        )
    tables = [t.loc[shared] for t in indexed]
    class_names = next((r.class_names for r in runs if r.has_classification), [])
    truth = _combined_truth(runs, tables, class_names)
    aligned = Aligned(
        unit=unit,
        units=shared.to_numpy(dtype=str),
        patients=_check_patients(runs, tables, unit),
        class_names=class_names,
        truth=truth if truth is not None else np.full(len(shared), -1),
        dropped=dropped,
    )
    for run, table in zip(runs, tables, strict=True):
        if run.has_classification:
            probs = table[[PROB_PREFIX + c for c in class_names]].to_numpy(dtype=np.float64)
            if not np.isfinite(probs).all():
                raise MritumorError(f"{run.name}: p_type_* columns contain NaN or inf")
            aligned.probs[run.name] = probs
            aligned.preds[run.name] = _predictions(run, table, probs, class_names)
        if run.has_dice:
            aligned.dice[run.name] = table["dice"].to_numpy(dtype=np.float64)
    return aligned
