"""Data-layer benchmark: read → cache (first pass) → second pass through the cache → DataLoader.

Prints one JSON line. Example:
    .venv/bin/python benchmarks/bench_data.py --data_root ../shared/data/figshare --image_size 224
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import torch
from torch.utils.data import DataLoader

from mritumor.checkpoints import git_commit
from mritumor.data.augment.transforms import build_transform
from mritumor.data.loading.cache import Preprocessing, SliceCache, infer_channels
from mritumor.data.loading.datasets import SliceDataset
from mritumor.data.loading.labels import LabelSpace
from mritumor.data.reading.readers import read_catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument(
        "--augment", action="store_true", help="apply the train augmentation in the loader"
    )
    parser.add_argument("--cache_dir", default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    catalog = read_catalog(args.data_root)
    read_s = time.perf_counter() - started
    prep = Preprocessing(args.image_size, infer_channels(catalog))

    started = time.perf_counter()
    cache = SliceCache.build(catalog, prep, cache_dir=args.cache_dir, progress=False)
    first_pass_s = time.perf_counter() - started  # decode + preprocess every slice

    started = time.perf_counter()
    for row in range(len(cache)):
        cache.image(row)
        cache.mask(row)
    second_pass_s = time.perf_counter() - started  # every slice again, through the cache

    labels = LabelSpace.from_table(cache.catalog.table)
    transform = build_transform("train" if args.augment else "eval", args.image_size)
    dataset = SliceDataset(cache, range(len(cache)), labels, transform)
    loader = DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers
    )
    started, delivered = time.perf_counter(), 0
    for batch in loader:
        delivered += batch["image"].shape[0]
    loader_s = time.perf_counter() - started

    print(
        json.dumps(
            {
                "benchmark": "data",
                "data_root": args.data_root,
                "slices": len(cache),
                "image_size": args.image_size,
                "channels": prep.channels,
                "read_catalog_s": round(read_s, 2),
                "first_pass_s": round(first_pass_s, 2),
                "second_pass_s": round(second_pass_s, 3),
                "second_pass_speedup": round(first_pass_s / second_pass_s, 1),
                "loader_slices_per_s": round(delivered / loader_s, 1),
                "loader_augment": args.augment,
                "num_workers": args.num_workers,
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "torch_threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "commit": git_commit(),
            }
        )
    )


if __name__ == "__main__":
    main()
