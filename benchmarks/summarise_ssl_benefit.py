"""Table of benchmarks/ssl_benefit.sh's results: probes and fine-tuning, SimCLR vs random/scratch.

Prints a Markdown table and one JSON line. Usage: python benchmarks/summarise_ssl_benefit.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
    rows, record = [], {}
    for fraction in ("0.1", "0.25", "1.0"):
        entry = {}
        for init in ("simclr", "random"):
            probe = json.loads(
                (out / f"probe_{init}_{fraction}" / "ssl_eval_metrics.json").read_text()
            )
            entry[f"linear_probe_{init}"] = probe["linear_probe"]["accuracy"]
            entry[f"knn_{init}"] = probe["knn"]["accuracy"]
            entry["labelled_patients"] = probe["patients"]["labelled"]
        for init in ("simclr", "scratch"):
            metrics = json.loads(
                (out / f"finetune_{init}_{fraction}" / "test_metrics.json").read_text()
            )
            accuracy = metrics["tumor_type_accuracy"]
            entry[f"finetune_{init}"] = accuracy
            entry["test_patients"] = metrics["n_patients"]
        record[fraction] = entry
        rows.append(
            f"| {float(fraction):.0%} ({entry['labelled_patients']} patients) "
            f"| {entry['linear_probe_simclr']:.3f} | {entry['linear_probe_random']:.3f} "
            f"| {entry['knn_simclr']:.3f} | {entry['knn_random']:.3f} "
            f"| {_ci(entry['finetune_simclr'])} | {_ci(entry['finetune_scratch'])} "
            f"| {100 * (entry['finetune_simclr']['value'] - entry['finetune_scratch']['value']):+.1f} |"
        )
    print(
        "| labels | probe SimCLR | probe random | k-NN SimCLR | k-NN random "
        "| fine-tune SimCLR init | fine-tune scratch | Δ points |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(json.dumps({"benchmark": "ssl_benefit", "results": record}))


def _ci(metric: dict) -> str:
    return f"{metric['value']:.3f} [{metric['low']:.3f}, {metric['high']:.3f}]"


if __name__ == "__main__":
    main()
