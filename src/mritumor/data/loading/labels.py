"""The label space of a model: tumour types, grades, and which (type, grade) pairs exist.

Built from the training data and stored in every checkpoint, so evaluation and prediction
use the same class indices as training, and a grade never seen with a type in training gets
probability 0 under that type.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch


def _grade_key(grade: str):
    return (0, float(grade), grade) if grade.replace(".", "", 1).isdigit() else (1, 0.0, grade)


@dataclass(frozen=True)
class LabelSpace:
    types: tuple[str, ...]
    grades: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]  # (type, grade) combinations seen in training

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> LabelSpace:
        types = tuple(sorted(set(table["tumor_type"].astype(str))))
        known = table[table["grade"].notna()]
        grades = tuple(sorted(set(known["grade"].astype(str)), key=_grade_key))
        pairs = tuple(
            sorted(set(zip(known["tumor_type"], known["grade"].astype(str), strict=True)))
        )
        return cls(types, grades, pairs)

    def type_index(self, tumor_type: str) -> int:
        return self.types.index(tumor_type) if tumor_type in self.types else -1

    def grade_index(self, grade: str | None) -> int:
        """-1 for an unknown grade: it contributes to no grade loss or metric."""
        return self.grades.index(grade) if grade is not None and grade in self.grades else -1

    def allowed(self) -> torch.Tensor:
        """(types, grades) bool: which grades a type can have."""
        matrix = torch.zeros(len(self.types), len(self.grades), dtype=torch.bool)
        for tumor_type, grade in self.pairs:
            matrix[self.types.index(tumor_type), self.grades.index(grade)] = True
        return matrix

    def to_dict(self) -> dict:
        return {
            "types": list(self.types),
            "grades": list(self.grades),
            "pairs": [list(p) for p in self.pairs],
        }

    @classmethod
    def from_dict(cls, data: dict) -> LabelSpace:
        return cls(
            tuple(data["types"]), tuple(data["grades"]), tuple(tuple(p) for p in data["pairs"])
        )
