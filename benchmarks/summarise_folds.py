"""Mean ± sd over the folds of `recipe_runs.sh cv` (multi-task runs, one test_metrics.json each).

Prints a Markdown table (one row per fold, then mean ± sd with the sample sd, n − 1) and one JSON
line. Usage: python benchmarks/summarise_folds.py RUN/cv/fold0 RUN/cv/fold1 ...
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HEADLINE = [
    "tumor_type_accuracy",
    "tumor_type_patient_accuracy",
    "tumor_type_macro_auc",
    "dice",
    "dice_per_patient",
]


def fold_values(folder: Path) -> dict[str, float]:
    metrics = json.loads((folder / "test_metrics.json").read_text())
    return {key: float(metrics[key]["value"]) for key in HEADLINE if key in metrics}


def main(folders: list[str]) -> dict:
    if not folders:
        raise SystemExit(__doc__)
    rows = {Path(f).name: fold_values(Path(f)) for f in folders}
    summary = {}
    for key in HEADLINE:
        values = [row[key] for row in rows.values() if key in row]
        if len(values) >= 2:
            summary[key] = {"mean": statistics.mean(values), "sd": statistics.stdev(values), "n": len(values)}  # fmt: skip
    print("| fold | " + " | ".join(HEADLINE) + " |")
    print("|---" * (len(HEADLINE) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row.get(k, float('nan')):.3f}" for k in HEADLINE) + " |")  # fmt: skip
    print(
        "| mean ± sd | "
        + " | ".join(
            f"{summary[k]['mean']:.3f} ± {summary[k]['sd']:.3f}" if k in summary else "–"
            for k in HEADLINE
        )  # fmt: skip
        + " |"
    )
    print(json.dumps({"folds": rows, "summary": summary}))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
