"""``mritumor demo``: the pipeline end to end on generated data (or ``--data_root``).

Today's chain: synthesise → inspect → read, cache and split by patient → one augmented pass
of patient bags through a DataLoader. Each later stage (pretrain, train-hierarchical,
train-multitask, explain, compare, report) is appended here as it lands.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mritumor.data.datasets import PatientBagDataset, collate_bags
from mritumor.data.inspect import format_report, inspect_catalog
from mritumor.data.prepare import prepare_data
from mritumor.data.readers import read_catalog
from mritumor.data.synthetic import write_synthetic_dataset
from mritumor.data.transforms import build_transform

log = logging.getLogger(__name__)


def run_demo(outdir: Path, data_root: str | None = None, image_size: int = 128) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if data_root is None:
        print("[1/4] Generating a synthetic cohort (5 classes × 6 patients × 8 slices)")
        data_root = write_synthetic_dataset(
            outdir / "data",
            patients_per_class=6,
            slices_per_patient=8,
            image_size=image_size,
            seed=0,
        )
    print(f"[2/4] Inspecting {data_root}")
    report = inspect_catalog(read_catalog(data_root))
    (outdir / "inspect.json").write_text(json.dumps(report, indent=2))
    print(format_report(report))
    print("[3/4] Reading, caching and splitting by patient")
    data = prepare_data(data_root, image_size=image_size, outdir=outdir, seed=0)
    print(
        f"      split: {len(data.split.train)}/{len(data.split.val)}/{len(data.split.test)} patients "
        f"({data.split.strategy}) → {outdir / 'split.json'}"
    )
    print("[4/4] One augmented pass over training bags")
    bags = PatientBagDataset(
        data.cache,
        data.split.train,
        data.labels,
        bag_size=8,
        bag_policy="random",
        transform=build_transform("train", image_size),
    )
    loader = DataLoader(bags, batch_size=2, shuffle=True, collate_fn=collate_bags)
    pass_started, slices = time.perf_counter(), 0
    for batch in tqdm(loader, desc="Bags", unit="batch"):
        slices += int(batch["mask"].sum())
    rate = slices / (time.perf_counter() - pass_started)
    summary = {
        "data_root": str(data_root),
        "slices": len(data.catalog),
        "patients": len(data.catalog.patients),
        "skipped": len(data.catalog.problems),
        "split": {
            "train": len(data.split.train),
            "val": len(data.split.val),
            "test": len(data.split.test),
        },
        "augmented_slices_per_second": round(rate, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (outdir / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"Done in {summary['seconds']} s. Results in {outdir.resolve()}: inspect.json, split.json, "
        "demo_summary.json"
    )
    return summary
