"""Mean ± sd over folds of the headline metrics of one or more `--cv` runs (cv_summary.json).

Prints a Markdown table and one JSON line. Usage: python benchmarks/summarise_cv.py RUN/cv_summary.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADLINE = [
    "tumor_type_accuracy/value",
    "tumor_type_macro_f1/value",
    "tumor_type_macro_auc/value",
    "grade_e2e_accuracy/value",
    "grade_e2e_macro_auc/value",
    "grade_conditional_accuracy/value",
    "ece_before_scaling",
    "ece_after_scaling",
    "temperature",
]


def main() -> None:
    table, record = [], {}
    for path in map(Path, sys.argv[1:]):
        summary = json.loads(path.read_text())
        name = path.parent.name
        record[name] = {k: summary.get(k) for k in HEADLINE}
        cells = []
        for key in HEADLINE:
            value = summary.get(key)
            cells.append("—" if not value else f"{value['mean']:.3f} ± {value['sd']:.3f}")
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    print("| run | " + " | ".join(k.split("/")[0] for k in HEADLINE) + " |")
    print("|---|" + "---|" * len(HEADLINE))
    print("\n".join(table))
    print(json.dumps({"benchmark": "hierarchical_cv", "results": record}))


if __name__ == "__main__":
    main()
