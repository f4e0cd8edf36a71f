"""Checks of data against a loaded model, shared by ``evaluate`` and ``predict``: channels,
tumour types and grades the model cannot output."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mritumor.errors import DataError

if TYPE_CHECKING:  # predict's ONNX path must not import torch (models.loading does)
    from mritumor.models.loading import LoadedModel


def check_channels(found: int, loaded: LoadedModel, where: str) -> None:
    """Refuse data whose channel count differs from the training data's: the cache would
    silently average RGB into gray (or repeat gray into RGB), which the model never saw."""
    expected = loaded.preprocessing.channels
    if found != expected:
        raise DataError(
            f"{where} has {found}-channel images, but the model was trained on {expected}-channel "
            f"images (preprocessing.channels = {expected} in {loaded.path.name}); use data of the "
            "same kind (grayscale vs RGB) as the training data"
        )


def check_types(types, loaded: LoadedModel, where: str) -> None:
    """Tumour types the model cannot output would have no class index: refused, named."""
    unknown = sorted(set(map(str, types)) - set(loaded.labels.types))
    if unknown and loaded.classifies:
        raise DataError(
            f"{where} has tumour type(s) the model does not know: {', '.join(unknown)}; the model "
            f"knows {', '.join(loaded.labels.types)}. Evaluate on patients of those types only "
            "(e.g. with a manifest CSV listing them)."
        )


def unknown_grades(table, loaded: LoadedModel) -> dict[str, int]:
    """Grades of the data the model cannot output → number of patients; they are treated as
    unknown (no grade metric), exactly like a missing grade."""
    known = table[table["grade"].notna()]
    odd = known[~known["grade"].astype(str).isin(set(loaded.labels.grades))]
    return {str(g): int(n) for g, n in odd.groupby("grade")["patient_id"].nunique().items()}
