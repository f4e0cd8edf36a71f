"""``mritumor demo``: the whole pipeline end to end on generated data (or ``--data_root``).

The chain runs the same commands a user types, with small sizes so it fits a laptop CPU:

1. synthesise a cohort (skipped with ``--data_root``), 2. inspect it,
3. pretrain a slice encoder with SimCLR (labels unused),
4. train the two-step classifier (patient bags → type → grade) from that encoder,
5./6. train two multi-task variants (D: naive joint, E: class logits fused into segmentation),
7. explain the two-step classifier (attention, slice occlusion, occlusion maps, Grad-CAM),
8. compare the two multi-task variants with paired tests,
9. write one HTML report of every run.

Every stage re-uses the split of the pretraining run, so all models are tested on the same
patients and the comparison is paired.

This module only plans the steps (command lines) and summarises the results; the caller runs
each command line (``run``: :func:`mritumor.commands.demo.run_as_typed` parses it with the
commands' own parsers and runs it as ``mritumor ARGV`` would), so the library does not depend
on the command line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from mritumor import runfiles
from mritumor.errors import MritumorError

STEPS = 9


def run_demo(
    outdir: Path,
    data_root: str | None = None,
    quick: bool = False,
    *,
    run: Callable[[list[str]], int],
) -> dict:
    """Run the nine steps; ``run(argv)`` executes ``mritumor ARGV`` and returns its exit status
    (the same command line is printed first, for users to copy)."""
    outdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    real = data_root is not None
    # Real data: the cpu-quick recipe (minutes per step on a CPU); --quick cuts it to 2 epochs.
    # Generated data: small explicit settings sized for the 64-px synthetic cohort.
    epochs = ["--epochs", "2"] if quick else []
    if real:
        settings = dict.fromkeys(("ssl", "sup", "multitask"), ["--recipe", "cpu-quick", *epochs])
    else:
        small = ["--image_size", "64", "--patience", "0"]
        settings = {
            "ssl": ["--encoder", "small_cnn", "--image_size", "64", "--batch_size", "32"]
            + ["--lr", "1e-3", *(epochs or ["--epochs", "15"])],
            # 16 synthetic patients per class: augmentation would only slow learning down
            "sup": ["--backbone", "small_cnn", "--batch_size", "2", "--bag_size", "6"]
            + ["--augment", "none", "--lr", "1e-3", *small, *(epochs or ["--epochs", "20"])],
            "multitask": ["--backbone", "small_cnn", "--batch_size", "16", "--augment", "none"]
            + [*small, "--lr", "2e-3", *(epochs or ["--epochs", "12"])],
        }
    number = iter(range(1, STEPS + 1))

    def step(title: str, argv: list[str]) -> None:
        print(f"\n=== {next(number)}/{STEPS} {title}\n$ mritumor {' '.join(argv)}", flush=True)
        if run(argv) != 0:
            raise MritumorError(f"demo step failed: {title}")

    if data_root is not None:  # = real; spelled out so that type checkers narrow data_root
        next(number)  # no synthesis
    else:
        data_root = str(outdir / "data")
        step(
            "Generate a synthetic cohort (slices + tumour masks, three types, two grades)",
            ["data", "synth", "--out", data_root, "--patients_per_class", "16"]
            + ["--slices_per_patient", "6", "--image_size", "64"],
        )
    step("Inspect the data", ["data", "inspect", "--data_root", data_root])
    ssl_dir, run_dir = outdir / "simclr_pretrain", outdir / "two_step"
    split = ["--split_file", str(ssl_dir / runfiles.SPLIT)]
    step(
        "Self-supervised pretraining (SimCLR, labels unused)",
        ["pretrain", "--data_root", data_root, "--outdir", str(ssl_dir), *settings["ssl"]],
    )
    step(
        "Two-step classifier: patient bags → type → grade, from the SSL encoder",
        ["train-hierarchical", "--data_root", data_root, "--outdir", str(run_dir)]
        + ["--ssl_ckpt", str(ssl_dir / runfiles.SSL_CHECKPOINT), *split, *settings["sup"]],
    )
    multitask_dir = outdir / "multitask"
    for variant, what in (("D", "naive joint training"), ("E", "class logits fused into masks")):
        step(
            f"Multi-task segmentation + classification, variant {variant} ({what})",
            ["train-multitask", "--data_root", data_root, "--outdir"]
            + [str(multitask_dir / variant), "--variant", variant, "--n_boot", "500", *split]
            + settings["multitask"],
        )
    explain_dir = outdir / "explain"
    step(
        "Explain the two-step classifier: which slices, and where inside them",
        [
            "explain",
            "--checkpoint",
            str(run_dir / runfiles.BEST_CHECKPOINT),
            "--data_root",
            data_root,
        ]
        + ["--outdir", str(explain_dir), "--max_patients", "3", "--top_slices", "2"],
    )
    compare_dir = outdir / "compare"
    step(
        "Compare the two multi-task variants on the same test patients (paired tests)",
        ["compare", str(multitask_dir / "D"), str(multitask_dir / "E")]
        + ["--outdir", str(compare_dir), "--n_boot", "500"],
    )
    report = outdir / "report.html"
    step(
        "One HTML report of every run",
        ["report", str(outdir), "--output", str(report), "--title", "mritumor demo"],
    )
    metrics = json.loads((run_dir / runfiles.TEST_METRICS).read_text())
    multitask = {
        variant: json.loads((multitask_dir / variant / runfiles.TEST_METRICS).read_text())
        for variant in ("D", "E")
    }
    summary = {
        "seconds": round(time.perf_counter() - started, 1),
        "data_root": data_root,
        "ssl_checkpoint": str(ssl_dir / runfiles.SSL_CHECKPOINT),
        "run": str(run_dir),
        "tumor_type_accuracy": metrics["tumor_type_accuracy"],
        "grade_e2e_accuracy": metrics.get("grade_e2e_accuracy"),
        "multitask": {
            variant: {
                "dice": m.get("dice", {}).get("value"),
                "tumor_type_accuracy": m.get("tumor_type_accuracy", {}).get("value"),
            }
            for variant, m in multitask.items()
        },
        "report": str(report),
    }
    (outdir / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nDemo finished in {summary['seconds']} s.")
    print(f"Two-step classifier: {run_dir.resolve()}")
    print(f"Multi-task variants: {multitask_dir.resolve()}; comparison: {compare_dir.resolve()}")
    print(f"Report: {report.resolve()}  (open it in a browser)")
    return summary
