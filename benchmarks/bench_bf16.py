"""bf16 mixed precision on the CPU: training steps per second of the `cpu` recipe's multi-task
network in float32 and under bf16 autocast, on this machine.

The network, loss, optimiser and weight average are the project's own, built from the `cpu`
recipe's train-multitask section (ResNet-18 encoder, U-Net decoder, 192 px, batch 16,
channels-last, dice+CE mask loss weighted 2, AdamW, EMA 0.99) the way `tasks/multitask.py`
builds them (`build_model`, `MultiTaskTask.losses`, `configure_optimizers`,
`on_train_batch_end`). One step = forward + loss + backward + optimiser step + EMA update on
one random batch (no data loading or augmentation: the arithmetic alone). Each precision has
its own copy of the network from the same initial weights; after the warm-up steps the two are
timed in alternating blocks, so that a machine whose speed drifts (other jobs, turbo, heat)
slows both alike. Reported per precision: median and interquartile range of the seconds per
step, steps/s (1 / median), and bf16's speed-up; with the processor (lscpu's model name, its
bf16 flags and what `--precision auto` would choose), torch's version and the threads. The
agreement of bf16's first outputs with float32's is reported too (a sanity check, not the
accuracy: that needs whole runs, below).

    .venv/bin/python benchmarks/bench_bf16.py --steps 60 --warmup 5 --out bf16_<machine>.json

Accuracy on the same recipe (Dice and accuracy with 95 % intervals in test_metrics.json):

    mritumor train-multitask --recipe cpu --variant D --data_root DATA \
        --outdir runs/fp32 --precision 32
    mritumor train-multitask --recipe cpu --variant D --data_root DATA \
        --outdir runs/bf16 --precision bf16
    mritumor compare --outdir runs/fp32_vs_bf16 runs/fp32 runs/bf16
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import lightning
import numpy as np
import torch

from mritumor.checkpoints import git_commit
from mritumor.config import MultitaskConfig
from mritumor.data.loading.labels import LabelSpace
from mritumor.recipes import recipe_values
from mritumor.tasks.multitask import MultiTaskTask, build_model
from mritumor.training import cpu_bf16_flags, native_cpu_bf16, resolve_precision

TYPES = ("glioma", "meningioma", "pituitary")  # figshare's three, as the cpu recipe trains on
PRECISIONS = ("32", "bf16")

# ------------------------------------------------------------------ the machine


def cpu_model_name() -> str:
    """lscpu's 'Model name' (else /proc/cpuinfo's 'model name', else platform's)."""
    if shutil.which("lscpu"):
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in output.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "Model name":
                return value.strip()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def proc_cpuinfo_flags(names=("avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")):
    """Which of ``names`` the kernel lists in /proc/cpuinfo (None off Linux)."""
    from mritumor.training import cpuinfo_flags

    flags = cpuinfo_flags()
    return None if flags is None else {name: name in flags for name in names}


def machine() -> dict:
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu_model_name(),
        "cores_usable": len(affinity) if affinity is not None else os.cpu_count(),
        "proc_cpuinfo_flags": proc_cpuinfo_flags(),
        "torch_bf16_flags": cpu_bf16_flags(),  # what mritumor's detection read
        "native_bf16": native_cpu_bf16(),
        "auto_precision": resolve_precision("auto", "cpu").precision,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")
        or os.environ.get("DNNL_MAX_CPU_ISA"),
        "torch": str(torch.__version__),
        "lightning": str(lightning.__version__),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "commit": git_commit(),
    }


# ------------------------------------------------------------------ the step


def recipe_config(recipe: str, variant: str) -> MultitaskConfig:
    return MultitaskConfig.from_flags(
        {**recipe_values(recipe, "train-multitask"), "variant": variant}
    )


def build_task(config: MultitaskConfig, device: torch.device) -> MultiTaskTask:
    """The recipe's network and training module, as ``tasks.multitask.run_variant`` builds them
    (no class weights: they do not change the arithmetic)."""
    labels = LabelSpace(TYPES, (), ())
    model = build_model(config, config.variant, labels, channels=1)
    if config.channels_last:
        model = model.to_channels_last()
    model = model.to(device)
    task = MultiTaskTask(
        model, config.lr, config.weight_decay, config.epochs, config.seg_weight, config.cls_weight,
        None, "joint", config.seg_loss, config.warmup_epochs, config.ema_decay,
    )  # fmt: skip
    return task.to(device)


def random_batch(config: MultitaskConfig, device: torch.device, seed: int = 0) -> dict:
    """One batch of the recipe's shapes, the dtypes the device loader yields."""
    generator = torch.Generator().manual_seed(seed)
    size, b = config.data.image_size, config.batch_size
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    images = torch.rand(b, 1, size, size, generator=generator)
    masks = (torch.rand(b, 1, size, size, generator=generator) > 0.9).to(torch.uint8)
    batch = {
        "image": images.contiguous(memory_format=layout),
        "mask": masks,
        "has_mask": torch.ones(b, dtype=torch.bool),
        "tumor_type": torch.randint(0, len(TYPES), (b,), generator=generator),
    }
    return {k: v.to(device) for k, v in batch.items()}


class Trainee:
    """One precision's copy of the task, its optimiser, and a timed training step."""

    def __init__(self, task: MultiTaskTask, precision: str, device: torch.device):
        self.task, self.device = task, device
        self.bf16 = resolve_precision(precision, device.type).precision == "bf16-mixed"
        self.optimizer = task.configure_optimizers()["optimizer"]
        self.seconds: list[float] = []
        self.losses: list[float] = []
        task.train()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def step(self, batch: dict, index: int, timed: bool) -> None:
        started = time.perf_counter()
        with self.autocast():
            _, losses = self.task.losses(batch)
        losses["loss"].backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.task.on_train_batch_end(None, batch, index)  # the weight average
        loss = float(losses["loss"])  # waits for the step on any device
        if timed:
            self.seconds.append(time.perf_counter() - started)
        self.losses.append(loss)


def output_agreement(task: MultiTaskTask, batch: dict, device: torch.device) -> dict:
    """bf16 autocast's outputs against float32's, same weights, eval mode: the relative error
    of the logits and the share of mask pixels and class predictions that differ."""
    model = copy.deepcopy(task.model).eval()
    with torch.no_grad():
        exact = model(batch["image"])
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = model(batch["image"])
    report = {}
    for name, reference in exact.items():
        other = low[name].float()
        error = (other - reference).norm() / reference.norm().clamp_min(1e-12)
        report[f"{name}_relative_error"] = float(error)
    if "mask_logits" in exact:
        report["mask_pixels_differing"] = float(
            ((exact["mask_logits"] > 0) != (low["mask_logits"] > 0)).float().mean()
        )
    if "class_logits" in exact:
        report["class_predictions_differing"] = float(
            (exact["class_logits"].argmax(-1) != low["class_logits"].argmax(-1)).float().mean()
        )
    return report


def summary(seconds: list[float]) -> dict:
    q25, median, q75 = np.percentile(seconds, [25, 50, 75])
    return {
        "steps_timed": len(seconds),
        "s_per_step_median": round(float(median), 4),
        "s_per_step_iqr": [round(float(q25), 4), round(float(q75), 4)],
        "s_per_step_mean": round(statistics.fmean(seconds), 4),
        "steps_per_s": round(1.0 / float(median), 3),
    }


def run(args) -> dict:
    device = torch.device(args.device)
    config = recipe_config(args.recipe, args.variant)
    torch.manual_seed(args.seed)
    initial = build_task(config, device)
    batch = random_batch(config, device, args.seed)
    agreement = output_agreement(initial, batch, device)
    trainees = {p: Trainee(copy.deepcopy(initial), p, device) for p in args.precisions}
    for index in range(args.warmup):  # oneDNN picks and JIT-compiles its kernels here
        for trainee in trainees.values():
            trainee.step(batch, index, timed=False)
    done = 0
    while done < args.steps:  # alternating blocks: a drifting machine slows both alike
        block = min(args.block, args.steps - done)
        for trainee in trainees.values():
            for k in range(block):
                trainee.step(batch, args.warmup + done + k, timed=True)
        done += block
    results = {p: {**summary(t.seconds), "last_loss": t.losses[-1]} for p, t in trainees.items()}
    if "32" in results and "bf16" in results:
        results["bf16_speedup"] = round(
            results["32"]["s_per_step_median"] / results["bf16"]["s_per_step_median"], 3
        )
    return {
        "benchmark": "bf16",
        "network": {
            "recipe": args.recipe,
            "variant": config.variant,
            "backbone": config.backbone,
            "decoder": config.decoder,
            "image_size": config.data.image_size,
            "batch_size": config.batch_size,
            "channels_last": config.channels_last,
            "ema_decay": config.ema_decay,
        },
        "device": str(device),
        "steps": args.steps,
        "warmup": args.warmup,
        "block": args.block,
        "machine": machine(),
        "results": results,
        "bf16_output_agreement": agreement,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="cpu", help="its train-multitask section")
    parser.add_argument("--variant", default="D", help="D: both heads trained jointly")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per precision")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per precision")
    parser.add_argument("--block", type=int, default=5, help="steps per precision in turn")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout only)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
