"""Training throughput: mritumor's command against a plain PyTorch loop on the same data.

One JSON line per (workload, implementation). Both train the same network (torchvision's
MobileNetV2 features with a 1-channel first convolution, or mritumor's multi-task net on it),
at the same image size, batch size and number of epochs, on the same slices: a folder of 8-bit
PNGs (+ masks) exported from --data_root once, before timing. What differs is everything around
the network:

* baseline: a `Dataset` that opens each PNG with PIL every time (as most hand-written loops do),
  torchvision transforms per item, a standard `DataLoader` (same number of workers as mritumor
  picks), a hand-written loop (AdamW, float32, contiguous NCHW tensors);
* mritumor: the real command (`pretrain`, `train-hierarchical`, `train-multitask --variant D`),
  i.e. preprocessed tensors cached once, channels-last, its loaders and Lightning loop;
* network_*: the baseline's network and loop on one random batch, repeated: no reading,
  decoding or augmentation, so the ceiling any data path can reach with that layout and
  precision (nchw: the baseline's arithmetic; channels_last: mritumor's on CPU; compile and
  bf16: the CPU options mritumor does not take by default, measured to show why).

Throughput is training slices per second during the training batches of each epoch (validation,
data caching and evaluation excluded), median over the epochs after the first (warm-up).
A hierarchical bag counts its slices; a SimCLR pair counts one slice (two views).

    .venv/bin/python benchmarks/bench_train.py --data_root ../shared/data/figshare \
        --workload simclr hierarchical multitask --image_size 224 --patients 24 --epochs 3
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from mritumor.checkpoints import git_commit
from mritumor.cli import main as run_cli
from mritumor.data.reading import io
from mritumor.data.reading.readers import read_catalog
from mritumor.losses import nt_xent_loss
from mritumor.models.backbones import adapt_first_conv
from mritumor.models.multitask import build_multitask_model
from mritumor.tasks import hierarchical as hierarchical_task
from mritumor.tasks import multitask as multitask_task
from mritumor.tasks import ssl as ssl_task
from mritumor.training import build_trainer, default_workers

# ------------------------------------------------------------------ the shared data


def export_pngs(data_root: str, out: Path, patients: int, seed: int) -> Path:
    """``out/<type>/<patient>/<n>.png`` (+ ``<n>_mask.png``) for ``patients`` patients, spread
    over the types: 8-bit, min-max scaled per slice, at the source's own resolution."""
    table = read_catalog(data_root).table
    rng = np.random.default_rng(seed)
    by_type = {t: sorted(g["patient_id"].unique()) for t, g in table.groupby("tumor_type")}
    chosen = []
    for k in range(patients):
        names = by_type[sorted(by_type)[k % len(by_type)]]
        chosen.append(names.pop(int(rng.integers(len(names)))))
    for patient in chosen:
        rows = table[table["patient_id"] == patient]
        for n, row in enumerate(rows.itertuples()):
            folder = out / str(row.tumor_type) / str(patient)
            folder.mkdir(parents=True, exist_ok=True)
            image = io.read_image(row.image, row.frame)[0]
            image = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
            Image.fromarray((255 * image).astype(np.uint8)).save(folder / f"{n:03d}.png")
            if isinstance(row.mask, str) and row.mask:
                mask = io.read_mask(row.mask, row.frame)
                Image.fromarray(255 * mask.astype(np.uint8)).save(folder / f"{n:03d}_mask.png")
    return out


def slice_files(root: Path) -> list[tuple[Path, Path | None, int, str]]:
    types = sorted(p.name for p in root.iterdir())
    items = []
    for image in sorted(root.glob("*/*/*.png")):
        if image.stem.endswith("_mask"):
            continue
        mask = image.with_name(f"{image.stem}_mask.png")
        items.append(
            (
                image,
                mask if mask.is_file() else None,
                types.index(image.parent.parent.name),
                image.parent.name,
            )
        )
    return items


# ------------------------------------------------------------------ the plain PyTorch baseline


def pil_tensor(path: Path) -> torch.Tensor:
    return v2.functional.to_dtype(
        v2.functional.pil_to_tensor(Image.open(path).convert("L")), torch.float32, scale=True
    )


class PlainSlices(Dataset):
    def __init__(self, items, size: int, kind: str):
        self.items, self.kind = items, kind
        geometry = [v2.Resize((size, size), antialias=True)]
        if kind == "ssl":
            self.transform = v2.Compose([
                *geometry, v2.RandomResizedCrop(size, scale=(0.3, 1.0), antialias=True),
                v2.RandomHorizontalFlip(), v2.ColorJitter(0.4, 0.4),
                v2.RandomApply([v2.GaussianBlur(9, (0.1, 2.0))], p=0.5),
            ])  # fmt: skip
        else:
            self.transform = v2.Compose([
                *geometry, v2.RandomResizedCrop(size, scale=(0.9, 1.0), antialias=True),
                v2.RandomHorizontalFlip(), v2.RandomRotation(5),
            ])  # fmt: skip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        image_path, mask_path, label, _ = self.items[i]
        image = pil_tensor(image_path)
        if self.kind == "ssl":
            return self.transform(image), self.transform(image)
        mask = tv_tensors.Mask(
            pil_tensor(mask_path) > 0.5 if mask_path else torch.zeros_like(image, dtype=torch.bool)
        )
        image, mask = self.transform(image, mask)
        return image, mask.float(), label


class PlainBags(Dataset):
    def __init__(self, items, size: int, bag: int):
        patients: dict[str, list] = {}
        for item in items:
            patients.setdefault(item[3], []).append(item)
        self.bags, self.bag = list(patients.values()), bag
        self.slices = PlainSlices(items, size, "train")

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i):
        bag = self.bags[i]
        chosen = np.linspace(0, len(bag) - 1, self.bag).round().astype(int)
        images = [self.slices.transform(pil_tensor(bag[k][0])) for k in chosen]
        return torch.stack(images), bag[0][2]


def mobilenet_features() -> tuple[nn.Module, int]:
    model = tvm.mobilenet_v2(weights=None)
    model.features[0][0] = adapt_first_conv(model.features[0][0], 1)
    return model.features, model.last_channel


class PlainSimCLR(nn.Module):
    def __init__(self):
        super().__init__()
        self.features, width = mobilenet_features()
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 128))

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class PlainMeanBag(nn.Module):
    def __init__(self, n_types: int):
        super().__init__()
        self.features, width = mobilenet_features()
        self.head = nn.Linear(width, n_types)

    def forward(self, bags):
        b, n = bags.shape[:2]
        slices = F.adaptive_avg_pool2d(self.features(bags.flatten(0, 1)), 1).flatten(1)
        return self.head(slices.view(b, n, -1).mean(1))


def baseline_model(workload: str, n_types: int, args) -> nn.Module:
    if workload == "simclr":
        return PlainSimCLR()
    if workload == "hierarchical":
        return PlainMeanBag(n_types)
    return build_multitask_model("D", n_types, "mobilenet_v2", 1, args.image_size)


def training_loss(workload: str, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
    """The workload's loss on one batch and the number of slices it counts."""
    if workload == "simclr":
        first, second = batch
        return nt_xent_loss(model(first), model(second), 0.5, gather=False), first.shape[0]
    if workload == "hierarchical":
        bags, labels = batch
        return F.cross_entropy(model(bags), labels), bags.shape[0] * bags.shape[1]
    images, masks, labels = batch
    out = model(images)
    loss = F.binary_cross_entropy_with_logits(out["mask_logits"], masks)
    return loss + F.cross_entropy(out["class_logits"], labels), images.shape[0]


def batch_size_of(workload: str, args) -> int:
    return 2 if workload == "hierarchical" else args.batch_size


def run_baseline(workload: str, items, n_types: int, args) -> list[float]:
    torch.manual_seed(0)
    workers = default_workers(-1)
    options = {
        "batch_size": batch_size_of(workload, args),
        "shuffle": True,
        "num_workers": workers,
        "drop_last": True,
    }
    if workload == "simclr":
        dataset = PlainSlices(items, args.image_size, "ssl")
    elif workload == "hierarchical":
        dataset = PlainBags(items, args.image_size, args.bag_size)
    else:
        dataset = PlainSlices(items, args.image_size, "train")
    loader = DataLoader(dataset, **options)
    # a plain loop on a GPU: float32, batches copied from the DataLoader's workers every step
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = baseline_model(workload, n_types, args).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    epochs = []
    for _ in range(args.epochs):
        batches = ([t.to(device) if isinstance(t, torch.Tensor) else t for t in b] for b in loader)
        epochs.append(train_epoch(workload, model, optimiser, batches, device))
    return epochs


def train_epoch(workload, model, optimiser, batches, device, bf16=False) -> tuple[int, int, float]:
    """One epoch of the plain loop: (slices, batch items, seconds). On a GPU the queued steps are
    waited for, so they count in this epoch's time."""
    started, slices_seen, items_seen = time.perf_counter(), 0, 0
    for batch in batches:
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss, slices = training_loss(workload, model, batch)
        slices_seen, items_seen = slices_seen + slices, items_seen + batch[0].shape[0]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return slices_seen, items_seen, time.perf_counter() - started


# ------------------------------------------------------------------ the network alone

NETWORK_MODES = ("nchw", "channels_last", "channels_last_compile", "channels_last_bf16")


def random_batch(workload: str, n_types: int, args, device, channels_last: bool):
    """One batch of the workload's shapes, drawn once: what the network computes on, with no
    reading, decoding or augmentation at all."""
    size, b = args.image_size, batch_size_of(workload, args)
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def images(n: int) -> torch.Tensor:
        return torch.rand(n, 1, size, size, device=device).contiguous(memory_format=layout)

    labels = torch.randint(0, n_types, (b,), device=device)
    if workload == "simclr":
        return images(b), images(b)
    if workload == "hierarchical":
        bags = images(b * args.bag_size).view(b, args.bag_size, 1, size, size)
        return bags, labels
    masks = (torch.rand(b, 1, size, size, device=device) > 0.8).float()
    return images(b), masks.contiguous(memory_format=layout), labels


def run_network(workload: str, items, n_types: int, args, mode: str) -> list[float]:
    """The baseline's network and loop on one random batch repeated, as many steps per epoch as
    the baseline takes: the arithmetic alone, i.e. the most any data path can reach with this
    layout and precision. ``mode``: NCHW float32 (the baseline's arithmetic), channels-last
    float32 (mritumor's on CPU), and the two CPU options mritumor does not take by default,
    ``torch.compile`` and bf16 autocast (measured to show why)."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    channels_last = mode != "nchw"
    model = baseline_model(workload, n_types, args).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    network = torch.compile(model) if mode.endswith("compile") else model
    batch = random_batch(workload, n_types, args, device, channels_last)
    steps = len(items) // batch_size_of(workload, args)
    if workload == "hierarchical":
        steps = len({item[3] for item in items}) // batch_size_of(workload, args)
    bf16 = mode.endswith("bf16")
    # one warm-up step first (and the compilation): not reported
    train_epoch(workload, network, optimiser, [batch], device, bf16)
    return [
        train_epoch(workload, network, optimiser, itertools.repeat(batch, steps), device, bf16)
        for _ in range(args.epochs)
    ]


# ------------------------------------------------------------------ mritumor's command


class TrainingBatchTimer(L.Callback):
    """Slices per second over each epoch's training batches (validation excluded)."""

    def __init__(self):
        self.epochs: list[tuple[int, int, float]] = []  # (slices, batch items, seconds)
        self.last = None  # no training batch yet (the sanity check validates before any)

    def on_train_epoch_start(self, trainer, module):
        self.started, self.last, self.seen, self.items = time.perf_counter(), None, 0, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, index):
        if isinstance(batch, list | tuple):
            self.seen += batch[0].shape[0]
            self.items += batch[0].shape[0]
        elif "images" in batch:
            self.seen += batch["mask"].sum()  # a device tensor: read once, at the epoch's end
            self.items += batch["images"].shape[0]
        else:
            self.seen += batch["image"].shape[0]
            self.items += batch["image"].shape[0]
        self.last = time.perf_counter()

    def _close(self) -> None:
        """At the end of the training batches (before validation): on a GPU wait for the queued
        steps, so they count in this epoch; no synchronisation inside the epoch."""
        if self.last is None:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.last = time.perf_counter()
        self.epochs.append((int(self.seen), self.items, self.last - self.started))
        self.last = None

    def on_validation_epoch_start(self, trainer, module):
        self._close()

    def on_train_epoch_end(self, trainer, module):
        self._close()


def run_mritumor(workload: str, root: Path, out: Path, args) -> list[float]:
    timer = TrainingBatchTimer()
    build = build_trainer

    def with_timer(run_args, outdir, max_epochs, callbacks=None, **overrides):
        return build(run_args, outdir, max_epochs, [*(callbacks or []), timer], **overrides)

    common = [
        "--data_root",
        str(root),
        "--outdir",
        str(out / workload),
        "--image_size",
        str(args.image_size),
    ]
    common += [
        "--epochs",
        str(args.epochs),
        "--seed",
        "0",
        "--val_frac",
        "0.1",
        "--test_frac",
        "0.1",
    ]
    if workload == "simclr":
        argv = [
            "pretrain",
            *common,
            "--encoder",
            "mobilenet_v2",
            "--batch_size",
            str(args.batch_size),
        ]
    elif workload == "hierarchical":
        argv = ["train-hierarchical", *common, "--backbone", "mobilenet_v2", "--batch_size", "2"]
        argv += ["--bag_size", str(args.bag_size), "--pooling", "mean", "--augment", "light"]
        argv += ["--patience", "0", "--n_boot", "10"]
    else:
        argv = ["train-multitask", *common, "--variant", "D", "--backbone", "mobilenet_v2"]
        argv += [
            "--batch_size",
            str(args.batch_size),
            "--augment",
            "light",
            "--patience",
            "0",
            "--n_boot",
            "10",
        ]
    argv += args.mritumor_flags.split()
    modules = [ssl_task, hierarchical_task, multitask_task]
    for module in modules:
        module.build_trainer = with_timer
    try:
        if run_cli(["-q", *argv]) != 0:
            raise SystemExit(f"mritumor {argv[0]} failed")
    finally:
        for module in modules:
            module.build_trainer = build
    return timer.epochs


class GpuBusy:
    """Share of time the GPU was busy while a run trained: ``nvidia-smi`` sampled every 100 ms
    in the background (``None`` without a GPU or without ``nvidia-smi``). The run's caching and
    evaluation are included, so this is a lower bound for the training epochs alone."""

    def __enter__(self) -> GpuBusy:
        self.samples: list[float] = []
        self.process = None
        if torch.cuda.is_available() and shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            self.process = subprocess.Popen(
                [*query, "-lms", "100", "-i", str(torch.cuda.current_device())],
                stdout=subprocess.PIPE,
                text=True,
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            output, _ = self.process.communicate()
            self.samples = [float(v) for v in output.split() if v.replace(".", "").isdigit()]

    @property
    def percent(self) -> float | None:
        return round(statistics.mean(self.samples), 1) if self.samples else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--workload", nargs="+", default=["simclr", "hierarchical", "multitask"])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--bag_size", type=int, default=8)
    parser.add_argument("--patients", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--implementations",
        nargs="+",
        default=["baseline", "mritumor", "network_nchw", "network_channels_last"],
        choices=["baseline", "mritumor", *(f"network_{mode}" for mode in NETWORK_MODES)],
        help="network_*: the baseline's network on a repeated random batch (no data path)",
    )
    parser.add_argument(
        "--mritumor_flags",
        default="",
        help="extra flags for the mritumor commands, e.g. '--num_workers 0'",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each (workload, implementation)"
    )
    parser.add_argument("--png_root", default=None, help=argparse.SUPPRESS)  # one child run
    args = parser.parse_args()
    if args.png_root:
        run_one(args, Path(args.png_root))
        return
    # Each (workload, implementation) runs in a fresh process, in turn: a run in a process
    # that already trained another network was up to 25 % slower (allocator and thread-pool
    # state), which would favour whichever side runs first.
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        root = export_pngs(args.data_root, work / "data", args.patients, seed=0)
        for _ in range(args.repeats):
            for workload in args.workload:
                for name in args.implementations:
                    child = [sys.executable, __file__, *sys.argv[1:], "--png_root", str(root)]
                    child += ["--workload", workload, "--implementations", name]
                    subprocess.run(child, check=True, stdout=sys.stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_one(args, root: Path) -> None:
    """One (workload, implementation) on an exported folder; prints its JSON line."""
    (workload,), (name,) = args.workload, args.implementations
    items = slice_files(root)
    n_types = len({item[2] for item in items})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_train_run_") as runs, GpuBusy() as busy:
        if name == "baseline":
            epochs = run_baseline(workload, items, n_types, args)
        elif name == "mritumor":
            with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON lines
                epochs = run_mritumor(workload, root, Path(runs), args)
        else:
            epochs = run_network(workload, items, n_types, args, name.removeprefix("network_"))
    rates = [seen / seconds for seen, _, seconds in epochs]
    steady = epochs[1:] or epochs
    print(json.dumps({
        "benchmark": "train", "workload": workload, "implementation": name,
        "mritumor_flags": args.mritumor_flags if name == "mritumor" else None,
        "slices_per_s": round(statistics.median(seen / seconds for seen, _, seconds in steady), 2),
        "patients_per_s": round(statistics.median(n / seconds for _, n, seconds in steady), 3)
        if workload == "hierarchical" else None,
        "epoch_s": round(statistics.median(seconds for *_, seconds in steady), 2),
        "per_epoch": [round(r, 2) for r in rates],
        "slices_per_epoch": [seen for seen, *_ in epochs], "wall_s": round(time.perf_counter() - started, 1),
        "image_size": args.image_size, "batch_size": batch_size_of(workload, args),
        "bag_size": args.bag_size if workload == "hierarchical" else None,
        "slices": len(items), "patients": args.patients, "epochs": args.epochs,
        "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
        "gpu_busy_percent": busy.percent,
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "commit": git_commit(),
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
