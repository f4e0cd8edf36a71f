"""Scale: time and peak memory of reading, caching and one epoch at 1×, 2×, 4×, 8× a dataset.

The manifest of --data_root (e.g. figshare's manifest.csv) is replicated k times (patient ids
suffixed, so every copy is a new patient; its files are links) and each size runs in a fresh
process, once with the cache in memory and once with the disk cache (--cache_dir,
memory-mapped), so memory is the process's own: peak RSS, and the largest private (anonymous)
RSS seen, which leaves out the reclaimable file-backed pages of the memory-mapped cache. One
epoch = every slice once through mritumor's SliceDataset + DataLoader with the training
augmentation (batch 64, 1 worker), i.e. the data side of a training epoch. One JSON line per
(scale, cache).

    .venv/bin/python benchmarks/bench_scale.py --data_root ../shared/data/figshare --image_size 128
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd


def replicate(manifest: Path, k: int, out: Path) -> Path:
    """k copies of the manifest's rows, each with its own patients and its own image files
    (the reader refuses one file listed under two patients, rightly): copy c reads its files
    through ``out/copy_c/``, a folder of links to the originals."""
    table = pd.read_csv(manifest)
    copies = []
    for copy in range(k):
        folder = out / f"copy_{copy}"
        part = table.copy()
        for column in ("image", "mask"):
            linked = []
            for value in part[column]:
                if not isinstance(value, str):
                    linked.append(value)
                    continue
                link = folder / value
                if not link.exists():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to((manifest.parent / value).resolve())
                linked.append(str(link))
            part[column] = linked
        for column in ("patient_id", "patient_family"):
            if column in part:
                part[column] = part[column].astype(str) + f"_r{copy}"
        copies.append(part)
    path = out / f"manifest_x{k}.csv"
    pd.concat(copies).to_csv(path, index=False)
    return path


def anon_rss_mib() -> float:
    """The process's private resident memory (RssAnon). Peak RSS also counts the pages of a
    memory-mapped disk cache the epoch has touched; those are file-backed and the kernel drops
    them under pressure, so RssAnon is what shows whether memory stays bounded."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(manifest: str, image_size: int, cache_dir: str | None) -> dict:
    """Runs inside the child process."""
    from torch.utils.data import DataLoader

    from mritumor.data.augment.transforms import build_transform
    from mritumor.data.loading.cache import Preprocessing, SliceCache, infer_channels
    from mritumor.data.loading.datasets import SliceDataset
    from mritumor.data.loading.labels import LabelSpace
    from mritumor.data.reading.readers import read_catalog

    peak_anon = [anon_rss_mib()]
    done = threading.Event()

    def sample() -> None:  # every 50 ms, for the whole measurement
        while not done.wait(0.05):
            peak_anon[0] = max(peak_anon[0], anon_rss_mib())

    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    catalog = read_catalog(manifest)
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    prep = Preprocessing(image_size, infer_channels(catalog))
    cache = SliceCache.build(catalog, prep, cache_dir=cache_dir, progress=False)
    cache_s = time.perf_counter() - started
    labels = LabelSpace.from_table(cache.catalog.table)
    dataset = SliceDataset(cache, range(len(cache)), labels, build_transform("train", image_size))
    loader = DataLoader(dataset, batch_size=64, shuffle=True, num_workers=1)
    started, seen = time.perf_counter(), 0
    for batch in loader:
        seen += batch["image"].shape[0]
    epoch_s = time.perf_counter() - started
    done.set()
    return {
        "slices": len(cache),
        "read_s": round(read_s, 2),
        "cache_s": round(cache_s, 2),
        "epoch_s": round(epoch_s, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "max_anon_rss_mib": round(max(peak_anon[0], anon_rss_mib())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_root", required=True, help="a folder holding manifest.csv")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        manifest, size, cache_dir = args.child
        print(json.dumps(measure(manifest, int(size), None if cache_dir == "-" else cache_dir)))
        return

    from mritumor.checkpoints import git_commit

    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        for k in args.scales:
            manifest = replicate(Path(args.data_root) / "manifest.csv", k, work)
            for cache in ("memory", "disk"):
                cache_dir = str(work / f"cache_x{k}") if cache == "disk" else "-"
                command = [sys.executable, __file__, "--data_root", args.data_root]
                command += ["--child", str(manifest), str(args.image_size), cache_dir]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(done.stderr[-3000:])
                result = json.loads(done.stdout.strip().splitlines()[-1])
                print(json.dumps({
                    "benchmark": "scale", "scale": k, "cache": cache, **result,
                    "image_size": args.image_size,
                    "machine": platform.processor() or platform.machine(), "commit": git_commit(),
                }), flush=True)  # fmt: skip
                shutil.rmtree(work / f"cache_x{k}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
