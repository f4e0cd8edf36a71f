"""``mritumor demo``: the pipeline end to end on generated data (or ``--data_root``).

The chain runs the same commands a user types, with small sizes so it fits a laptop CPU:
synthesise → inspect → pretrain (SimCLR) → train-hierarchical with that encoder. Each later
stage (train-multitask, explain, compare, report) is appended here as it lands.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mritumor.errors import MritumorError


def run_demo(outdir: Path, data_root: str | None = None, quick: bool = False) -> dict:
    from mritumor.cli import main  # the demo runs exactly what users type

    outdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    real = data_root is not None
    size = "128" if real else "64"
    backbone = "mobilenet_v2" if real else "small_cnn"
    epochs = {
        "ssl": "2" if quick else ("10" if real else "15"),
        "sup": "2" if quick else ("15" if real else "20"),
    }

    def step(title: str, argv: list[str]) -> None:
        print(f"\n=== {title}\n$ mritumor {' '.join(argv)}", flush=True)
        if main(argv) != 0:
            raise MritumorError(f"demo step failed: {title}")

    if not real:
        data_root = str(outdir / "data")
        step(
            "1/4 Generate a synthetic cohort",
            [
                "data",
                "synth",
                "--out",
                data_root,
                "--patients_per_class",
                "16",
                "--slices_per_patient",
                "6",
                "--image_size",
                "64",
            ],
        )
    step("2/4 Inspect the data", ["data", "inspect", "--data_root", data_root])
    ssl_dir, run_dir = outdir / "simclr_pretrain", outdir / "two_step"
    step(
        "3/4 Self-supervised pretraining (SimCLR, labels unused)",
        [
            "pretrain",
            "--data_root",
            data_root,
            "--outdir",
            str(ssl_dir),
            "--encoder",
            backbone,
            "--image_size",
            size,
            "--epochs",
            epochs["ssl"],
            "--batch_size",
            "32",
            "--lr",
            "1e-3",
        ],
    )
    step(
        "4/4 Two-step classifier: patient bags → type → grade, from the SSL encoder",
        [
            "train-hierarchical",
            "--data_root",
            data_root,
            "--outdir",
            str(run_dir),
            "--epochs",
            epochs["sup"],
            "--batch_size",
            "2",
            "--bag_size",
            "6",
            "--bag_policy",
            "uniform",
            "--backbone",
            backbone,
            "--ssl_ckpt",
            str(ssl_dir / "simclr_pretrain.pt"),
            "--image_size",
            size,
            "--lr",
            "1e-3",
            # 16 synthetic patients per class: augmentation would only slow learning down
            "--augment",
            "light" if real else "none",
            "--patience",
            "0",
            "--split_file",
            str(ssl_dir / "split.json"),
        ],
    )
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    summary = {
        "seconds": round(time.perf_counter() - started, 1),
        "data_root": data_root,
        "ssl_checkpoint": str(ssl_dir / "simclr_pretrain.pt"),
        "run": str(run_dir),
        "tumor_type_accuracy": metrics["tumor_type_accuracy"],
        "grade_e2e_accuracy": metrics.get("grade_e2e_accuracy"),
    }
    (outdir / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nDemo finished in {summary['seconds']} s.")
    print(
        f"Results: {run_dir.resolve()} (test_metrics.json, ROC/PR curves, confusion matrices, predictions.csv)"
    )
    return summary
