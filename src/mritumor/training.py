"""One way to build a Lightning Trainer for every task: devices, precision, logging, seeding.

CPU by default where there is no GPU; bf16 mixed precision on GPU, and on a CPU with native
bf16 when asked (``--precision auto``, :func:`resolve_precision`); DDP when more than one device
or node is asked for (gloo on CPU, NCCL on GPU — chosen by Lightning).

Every trainer also gets:

* :class:`EpochSeeding`: the random generators are re-seeded from (seed, epoch) before each
  training epoch, so a run resumed with ``--resume`` after a crash continues exactly as the
  uninterrupted run would have (same shuffling, augmentation and dropout);
* :class:`AtomicCheckpointIO`: Lightning's own checkpoints (``checkpoints/last.ckpt``) are
  written like mritumor's (temporary file in the same folder, fsync, rename), so a kill or a
  full disk while saving leaves the previous one intact.

Tasks add :class:`LastCheckpoint` to write ``checkpoints/last.ckpt`` after every epoch.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from mritumor import runfiles
from mritumor.config import TrainerConfig
from mritumor.errors import MritumorError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- precision

# ``--precision`` values of mritumor's own; any other value (Lightning's "32-true",
# "bf16-mixed", "16-mixed", ...) is handed to Lightning unchanged.
DEFAULT_PRECISION = "gpu-bf16"  # bf16-mixed on a GPU, 32-true elsewhere: the behaviour before auto
AUTO_PRECISION = "auto"  # as the default, and bf16-mixed on a CPU with native bf16 too
PRECISION_ALIASES = {"32": "32-true", "bf16": "bf16-mixed"}

# The CPU features that compute bf16 natively, the faster first, as (torch's and /proc/cpuinfo's
# flag name, the name logged). Without them oneDNN emulates bf16 and a training step is
# many times slower than in float32 (15x for mobilenet_v2 on an AVX2 CPU, benchmarks/RESULTS.md).
CPU_BF16_FEATURES = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``--precision`` resolved to: Lightning's precision, why, and a warning when the
    choice will be slow (bf16 asked for on a CPU that only emulates it)."""

    precision: str
    reason: str
    warning: str | None = None

    def describe(self) -> str:
        return f"precision: {self.precision} ({self.reason})"


def resolve_precision(precision: str, accelerator: str) -> PrecisionChoice:
    """The precision Lightning trains in for ``--precision`` on ``--accelerator``.

    * ``gpu-bf16`` (the default): bf16-mixed on a GPU, 32-true on the CPU;
    * ``auto``: bf16-mixed on a GPU, and on a CPU that computes bf16 natively (AMX or
      AVX512-BF16, :func:`native_cpu_bf16`); 32-true otherwise;
    * ``32`` / ``bf16``: 32-true / bf16-mixed wherever the run is; any other value is
      Lightning's own. bf16 asked for on a CPU without native bf16 is honoured (it reproduces a
      bf16 run's arithmetic, e.g. a GPU run's config.yaml) with a warning that it is emulated.
    """
    device = training_device_type(accelerator)
    if precision in (DEFAULT_PRECISION, AUTO_PRECISION):
        if device == "cuda":
            return PrecisionChoice("bf16-mixed", "GPU")
        if device != "cpu":
            return PrecisionChoice("32-true", f"{device}: float32")
        if precision == DEFAULT_PRECISION:
            return PrecisionChoice("32-true", "CPU; --precision auto uses bf16 where it is native")
        feature = native_cpu_bf16()
        if feature is None:
            return PrecisionChoice("32-true", "CPU without native bf16: no AMX-BF16 or AVX512-BF16")
        return PrecisionChoice("bf16-mixed", f"CPU has {feature}")
    resolved = PRECISION_ALIASES.get(precision, precision)
    warning = None
    if device == "cpu" and resolved.startswith("bf16") and native_cpu_bf16() is None:
        warning = (
            f"--precision {precision} on a CPU without native bf16 (no AMX-BF16 or AVX512-BF16): "
            "bf16 is emulated and training may be many times slower than --precision 32"
        )
    return PrecisionChoice(resolved, f"--precision {precision}", warning)


def training_device_type(accelerator: str) -> str:
    """'cuda', 'cpu' or another accelerator's name: where Lightning will train."""
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator != "auto":
        return accelerator
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def native_cpu_bf16() -> str | None:
    """The best CPU feature that computes bf16 natively ('AMX-BF16', 'AVX512-BF16'), or None.

    Asked of torch first, since its kernels are what will run (``torch.cpu.get_capabilities``,
    newer torch; else the ``torch.cpu._is_*_supported`` checks of earlier 2.x), then of
    ``/proc/cpuinfo``. A probe that is missing or fails (they are partly private API) is
    skipped; when none can tell, the CPU counts as without native bf16 (float32 stays)."""
    flags = cpu_bf16_flags()
    return next((name for key, name in CPU_BF16_FEATURES if flags.get(key)), None)


def cpu_bf16_flags() -> dict[str, bool]:
    """Which of :data:`CPU_BF16_FEATURES` this CPU has, from the first probe that can tell."""
    for probe in CPU_BF16_PROBES:
        try:
            flags = probe()
        except Exception as error:  # a private API that changed: try the next probe
            log.debug("CPU bf16 probe %s failed: %s", probe.__name__, error)
            continue
        if flags is not None:
            return flags
    return {}


def probe_torch_capabilities() -> dict[str, bool] | None:
    """``torch.cpu.get_capabilities()`` (torch's cpuinfo view; newer torch only: absent, the
    next probe answers)."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None:
        return None
    capabilities = dict(get_capabilities())
    if not any(key in capabilities for key, _ in CPU_BF16_FEATURES):
        return None
    return {key: bool(capabilities.get(key, False)) for key, _ in CPU_BF16_FEATURES}


def probe_torch_cpu_checks() -> dict[str, bool] | None:
    """``torch.cpu._is_amx_tile_supported`` and ``_is_avx512_bf16_supported`` (private; in
    torch 2.x before ``get_capabilities`` and still after). Every processor with AMX tiles
    (Sapphire Rapids onwards) also has AMX-BF16, so the tile check stands for it."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if amx is None and avx512_bf16 is None:
        return None
    return {
        "amx_bf16": bool(amx()) if amx is not None else False,
        "avx512_bf16": bool(avx512_bf16()) if avx512_bf16 is not None else False,
    }


def cpuinfo_flags(path: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU flags of Linux's ``/proc/cpuinfo`` (None elsewhere, or when it lists none)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        name, _, values = line.partition(":")
        if name.strip() == "flags":
            flags.update(values.split())
    return flags or None


def probe_proc_cpuinfo(path: str | Path = "/proc/cpuinfo") -> dict[str, bool] | None:
    """The bf16 features among ``/proc/cpuinfo``'s flags (None elsewhere)."""
    flags = cpuinfo_flags(path)
    if flags is None:
        return None
    return {key: key in flags for key, _ in CPU_BF16_FEATURES}


CPU_BF16_PROBES = (probe_torch_capabilities, probe_torch_cpu_checks, probe_proc_cpuinfo)

_announced: set[str] = set()


def announce_precision(choice: PrecisionChoice) -> None:
    """Log the precision once per process (a command builds a trainer per variant or fold),
    from the first process only."""
    message = choice.describe()
    # Lightning sets rank_zero_only.rank from the launcher's environment (typed as absent)
    if message in _announced or getattr(rank_zero_only, "rank", 0) != 0:
        return
    _announced.add(message)
    log.info(message)
    if choice.warning:
        log.warning(choice.warning)


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
    trainer: TrainerConfig,
    outdir: str | Path,
    max_epochs: int,
    callbacks: list | None = None,
    **overrides,
) -> L.Trainer:
    """A Lightning trainer for ``trainer``'s hardware and settings; ``EpochSeeding`` from its
    seed (none when the seed is None) and atomic checkpoints are added; ``overrides`` win."""
    from lightning.pytorch.loggers import CSVLogger

    if trainer.quiet:
        # Lightning sets its loggers to INFO when it is imported, which now happens after the
        # CLI configured logging (the parser no longer imports it): quieten them here.
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning 2.6 still builds torch's deprecated LeafSpec for every batch; torch ≥ 2.10 warns
    # about it once per run, a line users can do nothing about.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    devices = parse_devices(str(trainer.devices))
    many = (isinstance(devices, int) and devices > 1) or trainer.num_nodes > 1
    callbacks = list(callbacks or [])
    seed = trainer.seed
    if seed is not None and not any(isinstance(c, EpochSeeding) for c in callbacks):
        callbacks.append(EpochSeeding(seed))
    choice = resolve_precision(trainer.precision, trainer.accelerator)
    options = {
        "max_epochs": max_epochs,
        "accelerator": trainer.accelerator,
        "devices": devices,
        "num_nodes": trainer.num_nodes,
        "precision": choice.precision,
        "strategy": "ddp" if many else "auto",
        "deterministic": bool(trainer.deterministic),
        "logger": [CSVLogger(str(outdir), name="logs"), *tracking_loggers(trainer, outdir)],
        "callbacks": callbacks,
        "plugins": [AtomicCheckpointIO()],
        "enable_progress_bar": not trainer.quiet,
        "enable_model_summary": False,
        "default_root_dir": str(outdir),
        "log_every_n_steps": 1,
    }
    options.update(overrides)
    if "precision" in overrides:
        choice = PrecisionChoice(str(overrides["precision"]), "set by the task")
    announce_precision(choice)
    return L.Trainer(**options)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for one epoch of one process, independent of every other (seed, epoch)."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, rank]).generate_state(1)[0])


def seed_generators(seed: int) -> None:
    """Python's, NumPy's and torch's global generators (torch seeds every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class EpochSeeding(L.Callback):
    """Re-seeds the global generators from (seed, epoch, rank) right before each training epoch's
    data iterator is created, so that what an epoch draws (the shuffling order, the data-loader
    workers' seeds, augmentation, dropout) depends only on the seed and the epoch number.

    Lightning restores weights, optimiser, schedulers and loop counters on ``--resume`` but not
    the generators; with this callback a run resumed at epoch k (from the ``last.ckpt`` of
    epoch k - 1) trains epoch k and the following ones exactly as the uninterrupted run did (on
    CPU, with ``--deterministic``; on GPU up to non-deterministic kernels).

    When the iterator is created (Lightning 2.x ``FitLoop``): for the first epoch of a fit it
    is created in ``FitLoop.setup_data`` *before* ``on_train_epoch_start`` (and, on resume,
    after the checkpoint was restored); for the following epochs, after it. So the first epoch
    of a fit is seeded in ``on_fit_start`` (or in ``on_load_checkpoint`` when a strategy
    restores the checkpoint after ``on_fit_start``), from the epoch the fit will start at, and
    every later epoch in ``on_train_epoch_start``. A persistent-workers loader re-uses its
    workers, and their generators, across epochs: exact only with non-persistent workers or
    ``--num_workers 0``. Validation and test data do not depend on these generators.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._start_epoch = 0
        self._seeded_epoch: int | None = None  # the epoch already seeded before its iterator
        self._fitting = False

    def _seed(self, trainer: L.Trainer, epoch: int) -> None:
        seed_generators(epoch_seed(self.seed, epoch, trainer.global_rank))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fitting = True
        self._seed(trainer, self._start_epoch)
        self._seeded_epoch = self._start_epoch

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._start_epoch = resumed_epoch(checkpoint)
        if self._fitting:  # restored after on_fit_start: the iterator still does not exist
            self._seed(trainer, self._start_epoch)
            self._seeded_epoch = self._start_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self._seeded_epoch is not None:
            seeded, self._seeded_epoch = self._seeded_epoch, None
            if seeded == epoch:
                return  # seeded before its iterator was made; seeding again would differ
            log.warning(
                "the first epoch of this fit is %d, but it was seeded as epoch %d before its "
                "data iterator was made: a resumed run may differ from an uninterrupted one",
                epoch,
                seeded,
            )
        self._seed(trainer, epoch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fitting, self._start_epoch, self._seeded_epoch = False, 0, None

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("seed", self.seed) != self.seed:
            log.warning(
                "resuming with --seed %d a run started with --seed %d: from here on it draws "
                "other random numbers than the original run would have",
                self.seed,
                state_dict["seed"],
            )


def resumed_epoch(checkpoint: dict) -> int:
    """The epoch a fit resumed from this Lightning checkpoint starts at: the epochs the fit
    loop had processed (what ``FitLoop`` itself restarts from), else the one after the saved
    ``epoch`` (checkpoints are written at the end of an epoch)."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return int(checkpoint.get("epoch", -1)) + 1


class LastCheckpoint(Checkpoint):
    """``DIR/last.ckpt`` (Lightning's full training state) at the end of every training epoch,
    for ``--resume``. Lightning's ``ModelCheckpoint(save_last=True, save_top_k=0)`` writes it
    only in a step where it also saved a top-k checkpoint, that is never before the run ends,
    so a crash lost every finished epoch. Saved in ``on_train_epoch_end``, after the other
    callbacks (Lightning runs checkpoint callbacks last), like ``ModelCheckpoint`` does: a fit
    resumed from it starts at the next epoch with the learning-rate schedule where it was."""

    def __init__(self, dirpath: str | Path, filename: str = runfiles.LAST_CHECKPOINT):
        self.path = Path(dirpath) / filename

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            # the full training state (weights_only=False), for --resume; every rank calls it,
            # rank 0 writes
            trainer.save_checkpoint(self.path, weights_only=False)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written with :func:`mritumor.checkpoints.atomic_save`. (Lightning's
    own writer stages the file in the system temporary folder and moves it, which copies, not
    renames, when that folder is on another disk, and never fsyncs.)"""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        from mritumor.checkpoints import atomic_save

        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_save(checkpoint, path)


class BestStateCheckpoint(L.Callback):
    """Writes ``payload_fn(module)`` with :func:`save_checkpoint` (atomic, safe to load) whenever
    the monitored metric improves or equals its best (the later of tied epochs is kept). Its best score survives ``--resume`` (Lightning stores
    callback state in ``last.ckpt``)."""

    def __init__(self, path: str | Path, payload_fn, monitor: str, mode: str = "min"):
        self.path, self.payload_fn, self.monitor, self.mode = Path(path), payload_fn, monitor, mode
        self.best_score: float | None = None
        self.best_epoch: int | None = None

    def _improved(self, score: float) -> bool:
        # A tie counts: a coarse metric (accuracy over a few dozen validation patients) often
        # repeats its best, and the later weights have trained longer (a 60-epoch run kept its
        # untrained epoch 0 on a tie with epochs 38-39 before this).
        if self.best_score is None:
            return True
        return score <= self.best_score if self.mode == "min" else score >= self.best_score

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
                # what Lightning trained in (the flag, e.g. auto, is in the config entry)
                "precision": trained_precision(trainer),
            }
            save_checkpoint(payload, self.path)

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_epoch = state_dict.get("best_epoch")


def trained_precision(trainer) -> str | None:
    """Lightning's precision of ``trainer`` ('32-true', 'bf16-mixed', ...), None if unknown."""
    precision = getattr(trainer, "precision", None)
    return None if precision is None else str(precision)


def ema_with_warmup(decay: float):
    """The exponential-moving-average step of :class:`torch.optim.swa_utils.AveragedModel` with
    the decay ramped up as ``min(decay, (1 + n) / (10 + n))`` after n updates (as timm's
    ``ModelEmaV2`` warm-up): a fixed 0.99 from the first step keeps a third of the random
    initial weights after 100 steps, and that average of far-apart weights predicts nothing."""

    def average(averaged: torch.Tensor, current: torch.Tensor, n_averaged) -> torch.Tensor:
        n = float(n_averaged)
        rate = min(decay, (1 + n) / (10 + n))
        return averaged + (current - averaged) * (1 - rate)

    return average


def warmup_cosine(optimizer, epochs: int, warmup_epochs: int):
    """Linear warm-up from a tenth of the learning rate over ``warmup_epochs``, then cosine
    decay over the rest (stepped per epoch)."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(epochs - warmup_epochs, 1)
    )
    if warmup_epochs <= 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=0.1, total_iters=warmup_epochs
    )
    return torch.optim.lr_scheduler.SequentialLR(
        optimizer, [warmup, cosine], milestones=[warmup_epochs]
    )


TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # --logger → module it needs


def tracking_loggers(trainer: TrainerConfig, outdir: str | Path) -> list:
    """Lightning's TensorBoard or MLflow logger for ``--logger`` (CSV is always written: the
    report draws its training curves from it)."""
    import importlib.util

    if trainer.logger == "csv":
        return []
    if trainer.logger not in TRACKERS:
        raise MritumorError(
            f"unknown --logger {trainer.logger!r}; choose csv, tensorboard or mlflow"
        )
    if importlib.util.find_spec(TRACKERS[trainer.logger]) is None:
        raise MritumorError(
            f"--logger {trainer.logger} needs the {TRACKERS[trainer.logger]} package: "
            "pip install 'mritumor[tracking]' (or use --logger csv)"
        )
    if trainer.logger == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return [TensorBoardLogger(str(outdir), name="tensorboard")]
    from lightning.pytorch.loggers import MLFlowLogger

    uri = trainer.tracking_uri
    if uri is None:  # a local file store beside the run (the default)
        uri = Path(outdir).absolute().joinpath("mlruns").as_uri()
        # MLflow 3 keeps the file store working but refuses it unless asked for explicitly
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return [MLFlowLogger(experiment_name="mritumor", run_name=Path(outdir).name, tracking_uri=uri)]


def log_run(lightning_trainer: L.Trainer, flags: dict, metrics: dict, outdir: str | Path) -> None:
    """What every logger gets once a run is evaluated: the resolved flags, the test metrics
    (headline values of ``test_metrics.json``) and the paths of the run folder's files."""
    values = {
        f"test_{name}": float(entry["value"] if isinstance(entry, dict) else entry)
        for name, entry in metrics.items()
        if isinstance(entry, (int, float))
        and not isinstance(entry, bool)
        or isinstance(entry, dict)
        and isinstance(entry.get("value"), (int, float))
    }
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    files = sorted(str(p) for p in Path(outdir).iterdir() if p.is_file())
    for logger in lightning_trainer.loggers:
        if not isinstance(logger, MLFlowLogger | TensorBoardLogger):
            continue  # the CSV log stays one row per epoch; test metrics are in their JSON
        hyperparameters = {**flags, "precision_used": trained_precision(lightning_trainer)}
        logger.log_hyperparams({k: v for k, v in hyperparameters.items() if v is not None})
        if values:
            logger.log_metrics(values)
        if isinstance(logger, MLFlowLogger):
            for path in files:
                logger.experiment.log_artifact(logger.run_id, path)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text("artifacts", "\n".join(files))
        logger.save()
