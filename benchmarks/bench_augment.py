"""Augmentation throughput: the per-sample CPU path vs the batched path (CPU, and CUDA if any).

* ``cpu_per_sample``: ``SliceDataset`` + ``build_transform('train')`` through a DataLoader
  with the training commands' default number of workers (``default_workers(-1)``);
* ``batched_cpu`` / ``batched_cuda``: ``DeviceSliceLoader`` with ``BatchAugment('train')``, the
  whole set on that device (CUDA timings end with a synchronisation);
* ``per_slice_ms``: one ``build_transform('train')`` call on one slice in this process (what a
  DataLoader worker does per slice), median over ``--repeats`` rounds, for the standard
  config and for ``SHIFT_CONFIG``; ``--per_slice_only`` measures just this.

The slices are synthetic (``mritumor.data.acquire.synthetic.render_slice``, a few distinct ones tiled),
so the benchmark needs no data set: augmentation cost does not depend on the content.
Prints one JSON line. Example:
    .venv/bin/python benchmarks/bench_augment.py --image_size 224 --batch_size 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from mritumor.data.acquire.synthetic import render_slice
from mritumor.data.augment.batch_augment import BatchAugment
from mritumor.data.augment.transforms import SHIFT_CONFIG, build_transform
from mritumor.data.loading.cache import Preprocessing, SliceCache
from mritumor.data.loading.datasets import SliceDataset
from mritumor.data.loading.device_data import DeviceSliceLoader
from mritumor.data.loading.labels import LabelSpace
from mritumor.data.reading.catalog import Catalog
from mritumor.training import default_workers


def synthetic_cache(n: int, size: int, distinct: int = 16) -> SliceCache:
    rng = np.random.default_rng(0)
    rendered = [render_slice("astrocytoma", "2", rng, image_size=size) for _ in range(distinct)]
    images = np.stack([image for image, _ in rendered])[:, None].astype(np.float16)
    masks = np.stack([mask for _, mask in rendered])[:, None].astype(np.uint8)
    repeat = -(-n // distinct)
    images, masks = np.tile(images, (repeat, 1, 1, 1))[:n], np.tile(masks, (repeat, 1, 1, 1))[:n]
    table = pd.DataFrame(
        {
            "image": [f"s{i}" for i in range(n)],
            "frame": -1,
            "mask": [f"m{i}" for i in range(n)],
            "patient_id": [f"P{i}" for i in range(n)],
            "tumor_type": "astrocytoma",
            "grade": "2",
            "source": "synthetic",
        }
    )
    catalog = Catalog(table, "synthetic", ".")
    return SliceCache(catalog, Preprocessing(image_size=size), images, masks, np.ones(n, bool))


def slices_per_s(loader, synchronise=lambda: None) -> float:
    started, delivered = time.perf_counter(), 0
    for batch in loader:
        delivered += batch["image"].shape[0]
    synchronise()
    return delivered / (time.perf_counter() - started)


def per_slice_ms(transform, image, mask, calls: int, repeats: int) -> float:
    """Median over ``repeats`` rounds of the mean time of one call, in milliseconds."""
    torch.manual_seed(0)
    for _ in range(5):  # warm-up: first-call allocations
        transform(image, mask)
    rounds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            transform(image, mask)
        rounds.append((time.perf_counter() - started) / calls * 1e3)
    return round(float(np.median(rounds)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=512, help="slices per timed epoch")
    parser.add_argument("--num_workers", type=int, default=-1, help="-1: training default")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--per_slice_only", action="store_true", help="only per_slice_ms")
    parser.add_argument("--calls", type=int, default=100, help="per-slice calls per round")
    parser.add_argument("--repeats", type=int, default=5, help="per-slice rounds")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    size, workers = args.image_size, default_workers(args.num_workers)
    cache = synthetic_cache(args.slices, size)
    labels = LabelSpace.from_table(cache.catalog.table)
    rows = np.arange(args.slices)
    result = {"benchmark": "augment", "image_size": size, "batch_size": args.batch_size}
    image = torch.from_numpy(cache.images[0].astype(np.float32))
    mask = torch.from_numpy(cache.masks[0])
    for name, config in (("standard", None), ("shift", SHIFT_CONFIG)):
        transform = build_transform("train", size, config)
        result[f"per_slice_ms_{name}"] = per_slice_ms(
            transform, image, mask, args.calls, args.repeats
        )
    if args.per_slice_only:
        result["torch_threads"] = torch.get_num_threads()
        print(json.dumps(result))
        return

    dataset = SliceDataset(cache, rows, labels, build_transform("train", size))
    loader = DataLoader(dataset, args.batch_size, shuffle=True, num_workers=workers)
    result["cpu_per_sample_slices_per_s"] = round(slices_per_s(loader), 1)
    result["num_workers"] = workers

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        started = time.perf_counter()
        batched = DeviceSliceLoader.from_cache(
            cache,
            rows,
            labels,
            batch_size=args.batch_size,
            augment=BatchAugment(None, size, "train"),
            device=device,
        )
        synchronise = torch.cuda.synchronize if device == "cuda" else lambda: None
        synchronise()
        result[f"to_{device}_s"] = round(time.perf_counter() - started, 3)
        next(iter(batched))  # warm-up: kernels, allocator
        synchronise()
        result[f"batched_{device}_slices_per_s"] = round(slices_per_s(batched, synchronise), 1)

    result.update(
        {
            "slices": args.slices,
            "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
