"""One way to build a Lightning Trainer for every task: devices, precision, logging, seeding.

CPU by default where there is no GPU; bf16 mixed precision on GPU; DDP when more than one
device or node is asked for (gloo on CPU, NCCL on GPU — chosen by Lightning).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning as L
import torch

from mritumor.commands.common import flag


def add_trainer_flags(parser: argparse.ArgumentParser) -> None:
    flag(parser, "--accelerator", default="auto", help="cpu, gpu or auto")
    flag(
        parser,
        "--devices",
        default="1",
        help="devices per node (an integer, or 'auto'); >1 runs DDP",
    )
    flag(
        parser,
        "--num_nodes",
        type=int,
        default=1,
        help="machines for multi-node DDP (torchrun/SLURM)",
    )
    flag(parser, "--precision", default="auto", help="auto: bf16-mixed on GPU, 32-true on CPU")
    flag(
        parser,
        "--num_workers",
        type=int,
        default=-1,
        help="data-loader workers (-1: chosen from the machine)",
    )
    flag(
        parser,
        "--deterministic",
        action="store_true",
        help="deterministic algorithms (reproducible on CPU)",
    )
    flag(
        parser,
        "--resume",
        action="store_true",
        help="continue an interrupted run in the same --outdir",
    )


def resolve_precision(precision: str, accelerator: str) -> str:
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu else "32-true"


def default_workers(requested: int) -> int:
    """Decoding is done once by the cache; workers only run augmentation. Even on 2 cores one
    worker pays: it augments with one thread while the main process computes, instead of the
    main process running many tiny augmentation ops on a contended thread pool."""
    if requested >= 0:
        return requested
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    return min(8, max(1, cores // 2))


def parse_devices(devices: str):
    return devices if devices == "auto" else int(devices)


def build_trainer(
    args: argparse.Namespace,
    outdir: str | Path,
    max_epochs: int,
    callbacks: list | None = None,
    **overrides,
) -> L.Trainer:
    from lightning.pytorch.loggers import CSVLogger

    devices = parse_devices(str(args.devices))
    many = (isinstance(devices, int) and devices > 1) or args.num_nodes > 1
    options = {
        "max_epochs": max_epochs,
        "accelerator": args.accelerator,
        "devices": devices,
        "num_nodes": args.num_nodes,
        "precision": resolve_precision(args.precision, args.accelerator),
        "strategy": "ddp" if many else "auto",
        "deterministic": bool(args.deterministic),
        "logger": CSVLogger(str(outdir), name="logs"),
        "callbacks": callbacks or [],
        "enable_progress_bar": not getattr(args, "quiet", False),
        "enable_model_summary": False,
        "default_root_dir": str(outdir),
        "log_every_n_steps": 1,
    }
    options.update(overrides)
    return L.Trainer(**options)


class BestStateCheckpoint(L.Callback):
    """Writes ``payload_fn(module)`` with :func:`save_checkpoint` (atomic, safe to load) whenever
    the monitored metric improves. Its best score survives ``--resume`` (Lightning stores
    callback state in ``last.ckpt``)."""

    def __init__(self, path: str | Path, payload_fn, monitor: str, mode: str = "min"):
        self.path, self.payload_fn, self.monitor, self.mode = Path(path), payload_fn, monitor, mode
        self.best_score: float | None = None
        self.best_epoch: int | None = None

    def _improved(self, score: float) -> bool:
        if self.best_score is None:
            return True
        return score < self.best_score if self.mode == "min" else score > self.best_score

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # In Lightning 2.x validation has already run when this hook fires.
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        score = float(value)
        if not self._improved(score):
            return
        self.best_score, self.best_epoch = score, trainer.current_epoch
        if trainer.is_global_zero:
            from mritumor.checkpoints import save_checkpoint

            payload = self.payload_fn(pl_module)
            payload["training"] = {
                "monitor": self.monitor,
                "best_score": score,
                "best_epoch": trainer.current_epoch,
                "epochs_run": trainer.current_epoch + 1,
                "max_epochs": trainer.max_epochs,
            }
            save_checkpoint(payload, self.path)

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_epoch = state_dict.get("best_epoch")
