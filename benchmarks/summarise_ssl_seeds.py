"""Table of benchmarks/ssl_label_efficiency.sh: per seed, patient type accuracy (95 % interval)
and best epoch of the SimCLR-initialised and scratch runs; mean ± sd over seeds and the mean
paired difference. Usage: python benchmarks/summarise_ssl_seeds.py OUT --fraction 0.1 --epochs 60 --seeds 0 1 2
(``--epochs ''`` for run folders named without it)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mritumor.checkpoints import load_checkpoint

ARMS = ("simclr", "scratch")


def run_record(folder: Path) -> dict:
    metrics = json.loads((folder / "test_metrics.json").read_text())
    training = load_checkpoint(folder / "best.pt").get("training", {})
    return {
        "accuracy": metrics["tumor_type_accuracy"],
        "best_epoch": training.get("best_epoch"),  # counted from 0
        "max_epochs": training.get("max_epochs"),
    }


def summarise(out: Path, fraction: str, seeds: list[str], epochs: str = "60") -> dict:
    tag = f"_e{epochs}" if epochs else ""
    runs = {
        seed: {arm: run_record(out / f"finetune_{arm}_{fraction}{tag}_seed{seed}") for arm in ARMS}
        for seed in seeds
    }
    values = {arm: [runs[s][arm]["accuracy"]["value"] for s in seeds] for arm in ARMS}
    differences = [a - b for a, b in zip(values["simclr"], values["scratch"], strict=True)]
    summary = {
        arm: {"mean": statistics.mean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0}
        for arm, v in values.items()
    }
    summary["difference"] = {
        "mean": statistics.mean(differences),
        "sd": statistics.stdev(differences) if len(differences) > 1 else 0.0,
    }
    return {"fraction": fraction, "runs": runs, "summary": summary}


def markdown(result: dict) -> str:
    def cell(run: dict) -> str:
        a = run["accuracy"]
        return f"{a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}] | {run['best_epoch']} (0–{run['max_epochs'] - 1})"  # fmt: skip

    lines = [
        "| seed | SimCLR init: accuracy [95 % CI] | best epoch (range) | scratch: accuracy [95 % CI] | best epoch (range) | Δ points |",  # fmt: skip
        "|---|---|---|---|---|---|",
    ]
    for seed, arms in result["runs"].items():
        delta = 100 * (arms["simclr"]["accuracy"]["value"] - arms["scratch"]["accuracy"]["value"])
        lines.append(
            f"| {seed} | {cell(arms['simclr'])} | {cell(arms['scratch'])} | {delta:+.1f} |"
        )
    s = result["summary"]
    lines.append(
        f"| mean ± sd | {s['simclr']['mean']:.3f} ± {s['simclr']['sd']:.3f} | | "
        f"{s['scratch']['mean']:.3f} ± {s['scratch']['sd']:.3f} | | "
        f"{100 * s['difference']['mean']:+.1f} ± {100 * s['difference']['sd']:.1f} |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--fraction", default="0.1")
    parser.add_argument("--epochs", default="60", help="the runs' EPOCHS ('' for no tag)")
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    args = parser.parse_args()
    result = summarise(args.out, args.fraction, args.seeds, args.epochs)
    print(markdown(result))
    print(json.dumps({"benchmark": "ssl_label_efficiency", **result}))


if __name__ == "__main__":
    main()
