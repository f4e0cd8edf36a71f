r"""nnU-Net v2 beside mritumor on the same patients (issue: "and nnU-Net?").

Four stages, each a subcommand (``all`` runs them in order), all working in one ``--workdir``:

1. ``convert``: the catalog of ``--data_root`` (figshare, LGG, any source mritumor reads) and the
   patient split of a mritumor run (``--split RUN/split.json``) become an nnU-Net v2 raw dataset
   ``WORKDIR/nnUNet_raw/DatasetNNN_NAME/``: every slice is a case (``case_00042``), train and
   validation patients' slices go to ``imagesTr``/``labelsTr``, test patients' to ``imagesTs``
   (their labels to ``labelsTs``, for scoring only). Images are 2-D PNGs that nnU-Net reads with
   its ``NaturalImage2DIO``: one grayscale ``<case>_000k.png`` per channel (LGG: 3), at the
   slice's **native resolution** (figshare 256 px, LGG 128 px: nnU-Net plans its own patch and
   normalisation, so the project's resizing is not imposed on it). Pixel values are kept as they
   are when they already are 8-bit integers (figshare and LGG here); other sources (int16
   ``.mat``) are windowed at the project's 0.5/99.5 percentiles, as the cache does, and scaled to
   0–255 (PNG would otherwise need 16 bits, which nnU-Net also reads, but 8 bits keeps one format).
   Labels are uint8 0/1 (``{"background": 0, "tumour": 1}``). Slices without a mask are left out
   (nnU-Net cannot train on them and the project does not score them). ``mritumor_cases.csv``
   beside ``dataset.json`` maps each case to its patient, part, source file and frame, and
   ``nnUNet_preprocessed/DatasetNNN_NAME/splits_final.json`` holds one fold whose train/val cases
   are the slices of the split's train/val patients: nnU-Net's fold 0 *is* mritumor's split.
2. ``train``: nnU-Net's own fingerprinting, planning (default ``ExperimentPlanner``, ``2d``
   configuration: patch and batch size are nnU-Net's choice — figshare: 256 × 256, batch 49) and
   preprocessing, then training of fold 0 in this process, by a subclass of ``nnUNetTrainer``
   that changes only the epoch and iteration counts (validation iterations I/5, nnU-Net's
   250/50). The budget is ``--epochs E --iterations_per_epoch I``, or ``--time_budget_min T
   --iterations_per_epoch I``: the whole command (planning included) within T minutes, the
   epochs re-planned after each one from the measured epoch time, with nnU-Net's poly
   learning-rate schedule stretched to end at the last epoch (the epochs it settled on are
   recorded, for a rerun with ``--epochs``). ``--default`` is nnU-Net's own schedule (1000
   epochs × 250 iterations, meant for a GPU). ``--continue`` is nnU-Net's ``--c`` (continue from
   ``checkpoint_latest``/``final``); ``--stop_after_min M`` ends the command after the first
   epoch that finishes past M minutes, writing ``checkpoint_latest.pth``, so a long CPU run can be
   split over several commands with ``--continue``. The default-schedule trainer keeps nnU-Net's
   class name, so its folder and checkpoints are those ``nnUNetv2_train``/``nnUNetv2_predict``
   use. Wall times, nnU-Net's epoch times and pseudo Dice go to ``records/train_sessions.json``.
3. ``predict``: nnU-Net's ``nnUNetPredictor`` (sliding window with Gaussian weighting, and its
   default test-time augmentation: mirroring along both image axes; ``--no_mirroring`` to drop
   it) on ``imagesTs`` with fold 0's ``checkpoint_final.pth``.
4. ``score``: nnU-Net's predicted PNGs back to patients and slices, scored with the project's
   own functions (``mritumor.evaluation.multitask.segmentation_report``: per-slice Dice via MONAI,
   1 when both masks are empty; the mean over slices, over tumour slices only when some reference
   masks are empty, per patient; 95 % intervals from the patient-clustered bootstrap of
   ``mritumor.evaluation.bootstrap``). With ``--mritumor_run RUN`` the run's per-slice Dice
   (the ``dice`` column of its ``predictions.csv``, what ``mritumor compare`` reads: no model is
   re-run) is paired with nnU-Net's on the same slices, both on the run's grid: nnU-Net's
   prediction and the reference mask are brought to the run's ``image_size`` exactly as the
   project's cache brings a mask (zero-padded to a square, nearest-neighbour resize), so both
   tools are scored against the same reference pixels; nnU-Net's native-resolution score is
   reported too. Paired differences (nnU-Net − mritumor) come with patient-clustered bootstrap
   intervals and p-values (``clustered_bootstrap_mean_difference``, as ``mritumor compare``).
   Writes ``bench_nnunet.json`` and ``bench_nnunet.md`` (commands, budget, wall times, machine,
   numbers) and ``WORKDIR/nnunet_run/`` (``predictions.csv``, ``split.json``,
   ``test_metrics.json``): a run folder ``mritumor compare RUN WORKDIR/nnunet_run`` reads.

nnU-Net is a benchmark extra (``pip install 'mritumor[nnunet]'``), never a runtime dependency:
``--help``, ``convert`` and ``score`` work without it.

Usage (figshare at the ``cpu`` recipe's budget — at most 45 minutes per command on 2 CPU cores —
against the ``cpu`` recipe's run on the same fixed split, ``bash benchmarks/recipe_runs.sh best``
= ``train-multitask --recipe cpu --variant F --seed 0``; one command per stage):
    W=runs/bench/nnunet_figshare R=runs/recipes_cpu/F
    python benchmarks/bench_nnunet.py convert --workdir $W --data_root ../shared/data/figshare \
        --split $R/split.json
    python benchmarks/bench_nnunet.py train --workdir $W --device cpu --threads 2 \
        --augment_processes 1 --time_budget_min 43 --iterations_per_epoch 5 --no_final_validation
    python benchmarks/bench_nnunet.py predict --workdir $W --device cpu --threads 2
    python benchmarks/bench_nnunet.py score --workdir $W --mritumor_run $R
    mritumor compare $R $W/nnunet_run --outdir $W/compare      # optional: compare's own tests
LGG alike (``--data_root ../shared/data/lgg --split LGG_RUN/split.json --dataset_id 502``).
nnU-Net's own schedule on a GPU (same convert; ``--workdir`` copied to the GPU machine):
    python benchmarks/bench_nnunet.py train --workdir $W --default --device cuda
    python benchmarks/bench_nnunet.py predict --workdir $W --device cuda
    python benchmarks/bench_nnunet.py score --workdir $W --mritumor_run $R
and on CPU the same ``train --default --device cpu --stop_after_min 42``, repeated with
``--continue`` in later commands until ``records/train_sessions.json`` says ``finished``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mritumor.data.loading.splits import Split, load_split
from mritumor.data.reading import io
from mritumor.data.reading.readers import read_catalog

NNUNET_MISSING = (
    "nnU-Net v2 is not installed: pip install 'mritumor[nnunet]' "
    "(a benchmark extra for benchmarks/bench_nnunet.py, never needed by mritumor itself)"
)
CONFIGURATION = "2d"  # the slices are 2-D: nnU-Net plans only its 2d configuration for them
PLANS = "nnUNetPlans"
FILE_ENDING = ".png"
LABELS = {"background": 0, "tumour": 1}
CASES_FILE = "mritumor_cases.csv"  # case → patient, part, source file (beside dataset.json)
CONVERSION_FILE = "convert.json"  # what each stage did, in WORKDIR/records/
TRAIN_FILE = "train_sessions.json"  # one entry per train command (continued runs add entries)
PREDICT_FILE = "predict.json"
RESULT_FILE = "bench_nnunet.json"
RUN_FOLDER = "nnunet_run"  # predictions in the layout `mritumor compare` reads
DEFAULT_DATASET_ID = 501
DEFAULT_VAL_RATIO = 5  # nnU-Net's 250 training / 50 validation iterations per epoch
PAIRED_METRICS = {
    "dice": "per slice",
    "dice_tumour_slices": "tumour slices only",
    "dice_per_patient": "per patient (mean of its slices)",
}


# --------------------------------------------------------------------------- folders


class Workdir:
    """Everything of one benchmark lives under ``root``: nnU-Net's three folders (its
    ``nnUNet_raw``/``_preprocessed``/``_results`` environment variables point here), the test
    predictions, the stage records and the result. (A plain class: tests load this script
    without registering it as a module, which dataclasses need.)"""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions_test"

    @property
    def records(self) -> Path:
        return self.root / "records"

    def record(self, name: str) -> dict | list:
        path = self.records / name
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run the stage that writes it first")
        return json.loads(path.read_text())

    def write_record(self, name: str, record: dict | list) -> Path:
        self.records.mkdir(parents=True, exist_ok=True)
        path = self.records / name
        path.write_text(json.dumps(record, indent=2, default=_plain))
        return path

    def dataset_name(self) -> str:
        return self.record(CONVERSION_FILE)["dataset"]


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's ``DatasetNNN_Name`` (three digits; the name without characters a path dislikes)."""
    if not 1 <= dataset_id <= 999:
        raise SystemExit(f"--dataset_id {dataset_id}: nnU-Net needs 1..999")
    safe = "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-") or "mritumor"
    return f"Dataset{dataset_id:03d}_{safe}"


def use_nnunet(workdir: Workdir, threads: int | None = None) -> None:
    """Point nnU-Net at the workdir and set its process count. Before nnunetv2 is imported:
    older versions read these variables once, at import."""
    for name, path in (
        ("nnUNet_raw", workdir.raw),
        ("nnUNet_preprocessed", workdir.preprocessed),
        ("nnUNet_results", workdir.results),
    ):
        path.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(path.resolve())
    if threads:
        os.environ["nnUNet_def_n_proc"] = str(threads)
    try:
        import nnunetv2  # noqa: F401
    except ImportError as error:
        raise SystemExit(NNUNET_MISSING) from error


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- 1. convert


def case_table(catalog, split: Split) -> pd.DataFrame:
    """One row per slice that has a mask: its case id (from the catalog position, so ids are
    stable and safe in file names whatever the patient ids), patient and part of the split."""
    part_of = {p: part for part in ("train", "val", "test") for p in split.part(part)}
    table = catalog.table.reset_index(drop=True)
    width = max(5, len(str(len(table))))
    rows = []
    for position, row in enumerate(table.itertuples(index=False)):
        if row.mask is None or (isinstance(row.mask, float) and math.isnan(row.mask)):
            continue
        rows.append(
            {
                "case": f"case_{position:0{width}d}",
                "patient_id": str(row.patient_id),
                "part": part_of[str(row.patient_id)],
                "image": str(row.image),
                "frame": int(row.frame),
                "mask": str(row.mask),
                "channel": getattr(row, "channel", None),
            }
        )
    return pd.DataFrame(rows)


def slice_as_uint8(image: np.ndarray, channels: int) -> tuple[np.ndarray, str]:
    """(C, H, W) float32 → (channels, H, W) uint8 and how: 8-bit integer pixels are kept as
    they are; anything else is windowed at the cache's default 0.5/99.5 percentiles per channel
    and scaled to 0–255. Channels are matched as the cache matches them."""
    import torch

    from mritumor.data.loading.cache import Preprocessing, match_channels
    from mritumor.data.loading.intensity import intensity_window

    image = match_channels(torch.from_numpy(np.ascontiguousarray(image)), channels).numpy()
    if image.min() >= 0 and image.max() <= 255 and np.array_equal(image, np.round(image)):
        return image.astype(np.uint8), "8-bit, unchanged"
    prep = Preprocessing()
    flat = image.reshape(len(image), -1)
    low, high = intensity_window(flat, prep.intensity, prep.clip_low, prep.clip_high)
    low, high = low[:, None, None], high[:, None, None]
    scaled = np.clip((image - low) / np.maximum(high - low, 1e-6), 0, 1)
    return np.round(scaled * 255).astype(np.uint8), "windowed 0.5/99.5 % to 8 bits"


def channel_names(catalog, channels: int) -> dict[str, str]:
    """dataset.json's channel names: the manifest's ``channels`` column where it names as many
    (LGG: pre-contrast, FLAIR, post-contrast), else MRI. Any name but 'CT' gives nnU-Net's
    per-image z-score normalisation, its choice for MRI."""
    table = catalog.table
    if "channels" in table.columns and table["channels"].notna().any():
        names = str(table["channels"].dropna().iloc[0]).split(",")
        if len(names) == channels:
            return {str(k): name.strip() for k, name in enumerate(names)}
    return {str(k): "MRI" if channels == 1 else f"MRI_{k}" for k in range(channels)}


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def write_case(case: dict, dataset: Path, channels: int) -> dict:
    """The case's image channels and label as PNGs; returns its size and pixel policy."""
    from mritumor.data.loading.cache import pick_channel

    image = pick_channel(io.read_image(case["image"], case["frame"]), case["channel"])
    pixels, policy = slice_as_uint8(image, channels)
    mask = io.read_mask(case["mask"], case["frame"])
    if mask.shape != pixels.shape[1:]:
        raise io.SliceReadError(f"mask {mask.shape} and image {pixels.shape[1:]} differ in size")
    images, labels = (
        ("imagesTs", "labelsTs") if case["part"] == "test" else ("imagesTr", "labelsTr")
    )
    for k, channel in enumerate(pixels):
        write_png(dataset / images / f"{case['case']}_{k:04d}{FILE_ENDING}", channel)
    write_png(dataset / labels / f"{case['case']}{FILE_ENDING}", mask.astype(np.uint8))
    return {"height": mask.shape[0], "width": mask.shape[1], "pixels": policy, "tumour": mask.any()}


def write_cases(cases: pd.DataFrame, dataset: Path, channels: int) -> tuple[pd.DataFrame, list]:
    """Every case written; one that cannot be decoded is left out and listed, as the project's
    cache leaves it out of a run (so neither tool sees it)."""
    written, problems = {}, []
    for position, case in enumerate(cases.to_dict("records")):
        try:
            written[position] = write_case(case, dataset, channels)
        except io.SliceReadError as error:
            problems.append(f"{case['image']}: {error}")
    kept = cases.iloc[list(written)].drop(columns="channel").reset_index(drop=True)
    return pd.concat([kept, pd.DataFrame(list(written.values()))], axis=1), problems


def dataset_json(names: dict[str, str], n_training: int, source: str) -> dict:
    return {
        "channel_names": names,
        "labels": LABELS,
        "numTraining": n_training,
        "file_ending": FILE_ENDING,
        "overwrite_image_reader_writer": "NaturalImage2DIO",
        "name": source,
        "description": "slices of a mritumor catalog; written by benchmarks/bench_nnunet.py",
    }


def nnunet_splits(cases: pd.DataFrame) -> list[dict]:
    """splits_final.json: one fold, the slices of the split's train and validation patients."""
    return [
        {
            "train": sorted(cases.loc[cases["part"] == "train", "case"]),
            "val": sorted(cases.loc[cases["part"] == "val", "case"]),
        }
    ]


def convert(
    data_root: str | Path,
    split_path: str | Path,
    workdir: Workdir,
    dataset_id: int = DEFAULT_DATASET_ID,
    name: str | None = None,
    format: str | None = None,
) -> dict:
    """Write the nnU-Net raw dataset, the case map and splits_final.json; returns the record."""
    from mritumor.data.loading.cache import infer_channels

    start = time.perf_counter()
    catalog = read_catalog(data_root, format=format)
    split = load_split(split_path, catalog.table)
    if not split.val:
        raise SystemExit(f"{split_path} has no validation patients: nnU-Net's fold 0 needs some")
    dataset_name = dataset_folder_name(dataset_id, name or Path(data_root).resolve().name)
    dataset = workdir.raw / dataset_name
    if dataset.exists() and any(dataset.iterdir()):
        raise SystemExit(f"{dataset} exists already: use another --workdir or --dataset_id")
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (dataset / folder).mkdir(parents=True, exist_ok=True)
    channels = infer_channels(catalog)
    cases, problems = write_cases(case_table(catalog, split), dataset, channels)
    cases.to_csv(dataset / CASES_FILE, index=False)
    n_training = int((cases["part"] != "test").sum())
    names = channel_names(catalog, channels)
    (dataset / "dataset.json").write_text(json.dumps(dataset_json(names, n_training, dataset_name), indent=2))  # fmt: skip
    (workdir.preprocessed / dataset_name).mkdir(parents=True, exist_ok=True)
    splits_file = workdir.preprocessed / dataset_name / "splits_final.json"
    splits_file.write_text(json.dumps(nnunet_splits(cases), indent=2))
    record = {
        "command": _command(),
        "data_root": str(data_root),
        "split": str(Path(split_path).resolve()),
        "split_strategy": split.strategy,
        "dataset": dataset_name,
        "dataset_id": dataset_id,
        "channels": names,
        "resolution": _counts(cases["height"].astype(str) + "x" + cases["width"].astype(str)),
        "pixels": _counts(cases["pixels"]),
        "slices_without_mask_left_out": int(catalog.table["mask"].isna().sum()),
        "undecodable_slices_left_out": problems,
        "parts": {
            part: {
                "patients": int(cases.loc[cases["part"] == part, "patient_id"].nunique()),
                "slices": int((cases["part"] == part).sum()),
                "tumour_slices": int(cases.loc[cases["part"] == part, "tumour"].sum()),
            }
            for part in ("train", "val", "test")
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    workdir.write_record(CONVERSION_FILE, record)
    return record


def read_cases(workdir: Workdir) -> pd.DataFrame:
    path = workdir.raw / workdir.dataset_name() / CASES_FILE
    return pd.read_csv(path, dtype={"patient_id": str, "case": str, "image": str})


# --------------------------------------------------------------------------- 2. train


class TrainingTimeUp(Exception):
    """Raised after an epoch that finished past ``--stop_after_min``; the checkpoint is saved."""


class TrainingBudgetSpent(Exception):
    """Raised after the last epoch that fits ``--time_budget_min``; training then ends normally."""


class Budget:
    """What the trainer may spend: epochs × iterations, or iterations per epoch within a time
    (the epochs then follow from the measured epoch time), and an optional stop for a run split
    over commands. ``epochs`` None and no time: nnU-Net's own schedule."""

    def __init__(
        self,
        epochs: int | None = None,
        iterations: int | None = None,
        val_iterations: int | None = None,
        time_budget_min: float | None = None,
        stop_after_min: float | None = None,
        start: float | None = None,
    ):
        start = time.monotonic() if start is None else start
        self.epochs, self.iterations, self.val_iterations = epochs, iterations, val_iterations
        self.time_budget_min = time_budget_min
        self.end = start + 60 * time_budget_min if time_budget_min else None
        self.stop_at = start + 60 * stop_after_min if stop_after_min else None

    @property
    def is_default(self) -> bool:
        return self.epochs is None and self.end is None

    @property
    def trainer_name(self) -> str:
        if self.is_default:
            return "nnUNetTrainer"
        if self.end is not None:
            return f"nnUNetTrainer_{self.time_budget_min:g}min_{self.iterations}it"
        return f"nnUNetTrainer_{self.epochs}ep_{self.iterations}it"


def epochs_that_fit(done: int, seconds_left: float, epoch_seconds: list[float], most: int) -> int:
    """The epoch count whose remaining epochs, at the mean epoch time so far, end within the
    seconds left (at least the epochs done, at most ``most``)."""
    more = int(seconds_left // np.mean(epoch_seconds)) if epoch_seconds and seconds_left > 0 else 0
    return max(done, min(most, done + more))


def trainer_class(budget: Budget):
    """A subclass of nnUNetTrainer that changes only the epoch and iteration counts (the
    default budget keeps nnU-Net's, and its class name, so the default schedule's folder and
    checkpoints are those of nnU-Net's own commands), fits the epochs to a time budget, and can
    stop after a deadline with a checkpoint to continue from."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    cuda = torch.device("cuda")  # nnUNetTrainer's own default

    class BudgetTrainer(nnUNetTrainer):
        def __init__(self, plans, configuration, fold, dataset_json, device=cuda):
            super().__init__(plans, configuration, fold, dataset_json, device)
            if not budget.is_default:
                # a time budget starts from nnU-Net's 1000 epochs as the most it may run
                self.num_epochs = budget.epochs or self.num_epochs
                self.num_iterations_per_epoch = budget.iterations
                self.num_val_iterations_per_epoch = budget.val_iterations

        def on_epoch_end(self):
            super().on_epoch_end()  # counts the epoch: current_epoch is now the next one
            if budget.end is not None:
                self.fit_epochs_to_time()
                if self.current_epoch >= self.num_epochs:
                    raise TrainingBudgetSpent()
            if budget.stop_at is not None and time.monotonic() > budget.stop_at:
                if self.current_epoch < self.num_epochs:
                    # nnU-Net stores current_epoch + 1 (its on_train_end does the same dance)
                    self.current_epoch -= 1
                    self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
                    self.current_epoch += 1
                    raise TrainingTimeUp()

        def fit_epochs_to_time(self):
            """Re-plan the epochs after each one; the poly learning-rate schedule is stretched
            or shrunk with them, so it still decays to zero at the last epoch."""
            log = self.logger.get_value
            starts, ends = log("epoch_start_timestamps", None), log("epoch_end_timestamps", None)
            seconds = [e - s for s, e in zip(starts, ends, strict=False)]
            left = budget.end - time.monotonic()
            self.num_epochs = epochs_that_fit(self.current_epoch, left, seconds, self.num_epochs)
            self.lr_scheduler.max_steps = self.num_epochs

    BudgetTrainer.__name__ = BudgetTrainer.__qualname__ = budget.trainer_name
    return BudgetTrainer


def plan_and_preprocess(dataset_id: int, processes: int) -> dict:
    """What ``nnUNetv2_plan_and_preprocess -d ID -c 2d --verify_dataset_integrity`` does."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    start = time.perf_counter()
    extract_fingerprint_dataset(
        dataset_id, DatasetFingerprintExtractor, processes, check_dataset_integrity=True
    )
    plan_experiment_dataset(dataset_id, ExperimentPlanner)
    preprocess_dataset(dataset_id, PLANS, (CONFIGURATION,), (processes,))
    return {"seconds": round(time.perf_counter() - start, 1)}


def plan_summary(plans: dict) -> dict:
    configuration = plans["configurations"][CONFIGURATION]
    return {
        "configuration": CONFIGURATION,
        "patch_size": configuration["patch_size"],
        "batch_size": configuration["batch_size"],
        "normalization": configuration.get("normalization_schemes"),
        "network": configuration.get("architecture", {}).get("network_class_name"),
    }


def build_trainer(workdir: Workdir, trainer_type, device: str, resume: bool):
    import torch

    preprocessed = workdir.preprocessed / workdir.dataset_name()
    plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
    plans["continue_training"] = resume  # recent nnU-Net (2.8) reads and removes this key
    dataset = json.loads((preprocessed / "dataset.json").read_text())
    return trainer_type(
        plans=plans,
        configuration=CONFIGURATION,
        fold=0,
        dataset_json=dataset,
        device=torch.device(device),
    )


def check_fold0(trainer, workdir: Workdir) -> dict:
    """nnU-Net's own reading of fold 0 against the split's train/val cases."""
    train_cases, val_cases = trainer.do_split()
    expected = nnunet_splits(read_cases(workdir))[0]
    same = sorted(train_cases) == expected["train"] and sorted(val_cases) == expected["val"]
    if not same:
        raise SystemExit("nnU-Net's fold 0 is not the split's train/val patients: check splits_final.json")  # fmt: skip
    return {"train_cases": len(train_cases), "val_cases": len(val_cases), "equals_split": same}


def load_last_checkpoint(trainer, resume: bool) -> None:
    """nnU-Net's --c: its own maybe_load_checkpoint; a --continue with nothing to continue from
    stops here rather than silently training from scratch (as nnU-Net would)."""
    from nnunetv2.run.run_training import maybe_load_checkpoint

    if not resume:
        return
    folder = Path(trainer.output_folder)
    names = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
    if not any((folder / name).is_file() for name in names):
        raise SystemExit(
            f"--continue: no checkpoint in {folder} (the same --epochs/--iterations_per_epoch, "
            "or --default, as the run to continue are needed)"
        )
    maybe_load_checkpoint(trainer, True, False)


def stop_data_loaders(trainer) -> None:
    """The augmentation worker processes, which on_train_end would otherwise end."""
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if loader is not None and hasattr(loader, "_finish"):
            loader._finish()


def train(workdir: Workdir, args: argparse.Namespace) -> dict:
    """Plan and preprocess (once), then train fold 0 within the budget; returns the session."""
    start = time.monotonic()
    spec = budget_of(args, start)
    use_nnunet(workdir, args.threads)
    session: dict = {"command": _command(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    dataset_id = workdir.record(CONVERSION_FILE)["dataset_id"]
    plans_file = workdir.preprocessed / workdir.dataset_name() / f"{PLANS}.json"
    if args.replan or not plans_file.is_file():
        session["plan_and_preprocess"] = plan_and_preprocess(dataset_id, args.threads or 1)
    # only now: nnU-Net's planner sets torch's threads to this count, and refuses 0
    if args.augment_processes is not None:
        os.environ["nnUNet_n_proc_DA"] = str(args.augment_processes)
    set_threads(args.threads)
    session["plan"] = plan_summary(json.loads(plans_file.read_text()))
    trainer = build_trainer(workdir, trainer_class(spec), args.device, args.resume)
    if args.save_every:
        trainer.save_every = args.save_every
    session["fold0"] = check_fold0(trainer, workdir)
    load_last_checkpoint(trainer, args.resume)
    first_epoch = int(trainer.current_epoch)
    session.update(run_fold0(trainer, final_validation=not args.no_final_validation))
    session["budget"] = {
        "schedule": "nnU-Net default" if spec.is_default else "budget",
        "trainer": spec.trainer_name,
        "time_budget_min": spec.time_budget_min,
        "epochs": trainer.num_epochs,  # with a time budget: the count it settled on
        "iterations_per_epoch": trainer.num_iterations_per_epoch,
        "val_iterations_per_epoch": trainer.num_val_iterations_per_epoch,
        "first_epoch_of_this_command": first_epoch,
        "device": args.device,
        "threads": args.threads,
        "augment_processes": os.environ.get("nnUNet_n_proc_DA", "nnU-Net's default"),
    }
    session["machine"] = machine_description(args.device)
    session["command_seconds"] = round(time.monotonic() - start, 1)
    sessions = _read_list(workdir.records / TRAIN_FILE) + [session]
    workdir.write_record(TRAIN_FILE, sessions)
    return session


def budget_of(args: argparse.Namespace, start: float) -> Budget:
    if args.default:
        return Budget(stop_after_min=args.stop_after_min, start=start)
    if not args.iterations_per_epoch or not (args.epochs or args.time_budget_min):
        raise SystemExit(
            "give --iterations_per_epoch with --epochs or --time_budget_min (the budget), or --default"  # fmt: skip
        )
    if args.time_budget_min and args.resume:
        raise SystemExit(
            "--continue needs the epoch count: give the --epochs a --time_budget_min run settled on"  # fmt: skip
        )
    val = args.val_iterations or max(1, round(args.iterations_per_epoch / DEFAULT_VAL_RATIO))
    return Budget(
        None if args.time_budget_min else args.epochs,
        args.iterations_per_epoch,
        val,
        args.time_budget_min,
        args.stop_after_min,
        start,
    )


def run_fold0(trainer, final_validation: bool) -> dict:
    first_epoch = int(trainer.current_epoch)
    start = time.perf_counter()
    result: dict = {}
    try:
        trainer.run_training()
        result["finished"] = True
    except TrainingBudgetSpent:
        trainer.on_train_end()  # the final checkpoint, as after the last planned epoch
        result["finished"] = True
    except TrainingTimeUp:
        stop_data_loaders(trainer)
        result["finished"] = False
    result["train_seconds"] = round(time.perf_counter() - start, 1)
    result["epochs_done"] = int(trainer.current_epoch)
    result.update(epoch_log(trainer, first_epoch))
    if result["finished"] and final_validation:
        start = time.perf_counter()
        trainer.perform_actual_validation(False)
        result["final_validation_seconds"] = round(time.perf_counter() - start, 1)
    result["output_folder"] = str(trainer.output_folder)
    return result


def epoch_log(trainer, first_epoch: int) -> dict:
    """From nnU-Net's own log: the mean time of this command's epochs (training and validation
    batches together) and the pseudo Dice nnU-Net tracks on the validation batches."""
    log = trainer.logger.get_value
    starts, ends = log("epoch_start_timestamps", None), log("epoch_end_timestamps", None)
    seconds = [e - s for s, e in zip(starts[first_epoch:], ends[first_epoch:], strict=False)]
    pseudo, ema = log("mean_fg_dice", None), log("ema_fg_dice", None)
    mean = float(np.mean(seconds)) if seconds else None
    return {
        "seconds_per_epoch": None if mean is None else round(mean, 2),
        "seconds_per_training_iteration_upper_bound": (
            None if mean is None else round(mean / trainer.num_iterations_per_epoch, 3)
        ),
        "last_pseudo_dice": float(pseudo[-1]) if pseudo else None,
        "last_ema_pseudo_dice": float(ema[-1]) if ema else None,
    }


# --------------------------------------------------------------------------- 3. predict


def trained_folder(workdir: Workdir, checkpoint_name: str, trainer: str | None = None) -> Path:
    """The result folder of ``trainer`` (default: the newest one whose fold 0 has the
    checkpoint)."""
    base = workdir.results / workdir.dataset_name()
    pattern = f"{trainer or '*'}__{PLANS}__{CONFIGURATION}"
    folders = sorted(
        (f for f in base.glob(pattern) if (f / "fold_0" / checkpoint_name).is_file()),
        key=lambda f: (f / "fold_0" / checkpoint_name).stat().st_mtime,
    )
    if not folders:
        raise SystemExit(f"no fold 0 with {checkpoint_name} in {base}/{pattern}: train first")
    return folders[-1]


def build_network(trainer_type, plans_manager, configuration_manager, dataset: dict):
    """The network of a trained fold, as nnUNetPredictor.initialize_from_trained_model_folder
    builds it (that method looks the trainer class up by name inside nnU-Net's package, where
    this script's budget trainer is not; the budget trainer does not change the network)."""
    import inspect

    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset)
    outputs = plans_manager.get_label_manager(dataset).num_segmentation_heads
    if "plans_manager" in inspect.signature(trainer_type.build_network_architecture).parameters:
        return trainer_type.build_network_architecture(
            plans_manager, configuration_manager, inputs, outputs, enable_deep_supervision=False
        )
    return trainer_type.build_network_architecture(  # the signature of older nnU-Net versions
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        inputs,
        outputs,
        enable_deep_supervision=False,
    )


def load_predictor(folder: Path, checkpoint_name: str, device: str, mirroring: bool):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset = json.loads((folder / "dataset.json").read_text())
    plans_manager = PlansManager(json.loads((folder / "plans.json").read_text()))
    # nnU-Net's checkpoints hold Python objects (its init arguments); these are the files this
    # benchmark's own training wrote, loaded as nnU-Net loads them.
    checkpoint = torch.load(
        folder / "fold_0" / checkpoint_name, map_location="cpu", weights_only=False
    )
    configuration_manager = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])  # fmt: skip
    network = build_network(nnUNetTrainer, plans_manager, configuration_manager, dataset)
    network.load_state_dict(checkpoint["network_weights"])
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirroring,
        device=torch.device(device),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network,
        plans_manager,
        configuration_manager,
        [checkpoint["network_weights"]],
        dataset,
        checkpoint["trainer_name"],
        checkpoint.get("inference_allowed_mirroring_axes"),
    )
    return predictor, checkpoint


def predict(workdir: Workdir, args: argparse.Namespace) -> dict:
    use_nnunet(workdir, args.threads)
    set_threads(args.threads)
    checkpoint_name = f"checkpoint_{args.checkpoint}.pth"
    folder = trained_folder(workdir, checkpoint_name, args.trainer)
    predictor, checkpoint = load_predictor(folder, checkpoint_name, args.device, not args.no_mirroring)  # fmt: skip
    cases = read_cases(workdir)
    test = cases.loc[cases["part"] == "test", "case"].tolist()
    images = workdir.raw / workdir.dataset_name() / "imagesTs"
    n_channels = len(workdir.record(CONVERSION_FILE)["channels"])
    inputs = [[str(images / f"{c}_{k:04d}{FILE_ENDING}") for k in range(n_channels)] for c in test]
    workdir.predictions.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # one process: on a few CPU cores nnU-Net's worker pools only add start-up time
    predictor.predict_from_files_sequential(
        inputs, [str(workdir.predictions / c) for c in test], save_probabilities=False
    )
    record = {
        "command": _command(),
        "model_folder": str(folder),
        "checkpoint": checkpoint_name,
        "trainer": checkpoint["trainer_name"],
        "epochs_trained": checkpoint["current_epoch"],
        "test_time_augmentation": (
            f"mirroring along axes {predictor.allowed_mirroring_axes} (nnU-Net's default)"
            if not args.no_mirroring
            else "none (--no_mirroring)"
        ),
        "sliding_window": "tile step 0.5, Gaussian weighting (nnU-Net's defaults)",
        "cases": len(test),
        "seconds": round(time.perf_counter() - start, 1),
        "device": args.device,
        "threads": args.threads,
        "machine": machine_description(args.device),
    }
    workdir.write_record(PREDICT_FILE, record)
    return record


# --------------------------------------------------------------------------- 4. score


def read_label(path: Path) -> np.ndarray:
    """A 0/1 label PNG (a reference or an nnU-Net prediction) with the project's mask reader."""
    return io.read_mask(path).astype(np.uint8)


def on_grid(masks: list[np.ndarray], size: int | None) -> np.ndarray:
    """(N, S, S) masks as the project's cache makes them at ``image_size`` S (zero-padded to a
    square, nearest-neighbour resize); ``size`` None: the masks as they are (one shape needed)."""
    if size is None:
        shapes = {m.shape for m in masks}
        if len(shapes) != 1:
            raise SystemExit(f"slices of several sizes {sorted(shapes)[:3]}: give --score_size")
        return np.stack(masks)
    from mritumor.data.loading.cache import Preprocessing, preprocess_mask

    prep = Preprocessing(image_size=size)
    return np.stack([preprocess_mask(m, prep).numpy()[0] for m in masks])


def read_test_masks(workdir: Workdir, predictions: Path, test: pd.DataFrame) -> tuple[list, list]:
    labels = workdir.raw / workdir.dataset_name() / "labelsTs"
    missing = [c for c in test["case"] if not (predictions / f"{c}{FILE_ENDING}").is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} test case(s) have no prediction in {predictions}, e.g. {missing[:3]}")  # fmt: skip
    truth = [read_label(labels / f"{c}{FILE_ENDING}") for c in test["case"]]
    predicted = [read_label(predictions / f"{c}{FILE_ENDING}") for c in test["case"]]
    return truth, predicted


def project_report(truth: np.ndarray, predicted: np.ndarray, patients: np.ndarray, n_boot: int, seed: int) -> dict:  # fmt: skip
    """The project's segmentation evaluation of one set of slices, as ``train-multitask`` runs
    it on its test slices: headline with intervals, and the per-slice Dice/IoU/HD95."""
    from mritumor.evaluation.multitask import segmentation_report

    prediction = {
        "has_mask": np.ones(len(truth), dtype=bool),
        "pred_masks": predicted,
        "true_masks": truth,
    }
    return segmentation_report(prediction, patients, n_boot, seed)


def dice_headline(dice: np.ndarray, tumour: np.ndarray, patients: np.ndarray, n_boot: int, seed: int) -> dict:  # fmt: skip
    """The headline Dice numbers of ``segmentation_report`` from per-slice Dice values (what a
    run folder stores): mean over slices; over tumour slices and the share of tumour-free slices
    predicted empty when some reference masks are empty; the mean of per-patient means. Same
    bootstrap (patients, ``by_group``) and seed, so the same numbers as the project's report on
    the same slices (the tests check this against ``segmentation_report`` itself)."""
    from mritumor.evaluation.bootstrap import bootstrap_intervals, by_group
    from mritumor.evaluation.segmentation import per_patient_mean

    some_empty = bool((~tumour).any())

    def slice_means(rows: np.ndarray) -> dict:
        means = {"dice": _nanmean(dice[rows])}
        if some_empty:
            means["dice_tumour_slices"] = _nanmean(dice[rows[tumour[rows]]])
            means["empty_slices_predicted_empty"] = _nanmean(dice[rows[~tumour[rows]]] == 1)
        return means

    fn, n_groups = by_group(slice_means, patients)
    intervals = bootstrap_intervals(fn, n_groups, n_boot=n_boot, seed=seed)
    per_patient = np.array(list(per_patient_mean(dice, patients).values()))
    intervals.update(
        bootstrap_intervals(
            lambda idx: {"dice_per_patient": _nanmean(per_patient[idx])},
            len(per_patient),
            n_boot=n_boot,
            seed=seed,
        )
    )
    return {name: {k: v[k] for k in ("value", "low", "high")} for name, v in intervals.items()}


def read_mritumor_run(run: Path) -> tuple[pd.DataFrame, int]:
    """The run's per-slice Dice (``predictions.csv``) and the image size it was scored at."""
    import yaml

    csv = run / "predictions.csv"
    if not csv.is_file():
        raise SystemExit(f"{csv} is missing: give a train-multitask run folder")
    table = pd.read_csv(csv, dtype={"patient_id": str, "image": str})
    if "dice" not in table.columns or "image" not in table.columns:
        raise SystemExit(f"{csv} has no per-slice dice/image columns (a segmenting variant is needed)")  # fmt: skip
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}  # fmt: skip
    size = (config or {}).get("image_size")
    if size is None:
        raise SystemExit(f"{run}/config.yaml does not give the run's image_size")
    return table, int(size)


def image_key(path: str) -> str:
    """Paths of one file written from different working folders ('/a/../b') compare equal."""
    return os.path.normpath(str(path))


def match_run(test: pd.DataFrame, run_table: pd.DataFrame) -> pd.DataFrame:
    """The run's rows in the order of the test cases (NaN where the run lacks a slice)."""
    table = run_table.assign(_key=run_table["image"].map(image_key))
    if table["_key"].duplicated().any():
        raise SystemExit("the run's predictions.csv lists an image twice (multi-frame files cannot be paired)")  # fmt: skip
    matched = test[["case", "image", "patient_id"]].assign(_key=test["image"].map(image_key))
    matched = matched.merge(table, on="_key", how="left", suffixes=("", "_run"))
    differs = matched["patient_id_run"].notna() & (matched["patient_id_run"] != matched["patient_id"])  # fmt: skip
    if differs.any():
        raise SystemExit(f"the run gives another patient for {matched.loc[differs, 'image'].iloc[0]}")  # fmt: skip
    return matched


def paired_comparison(
    nnunet_dice: np.ndarray,
    mritumor_dice: np.ndarray,
    tumour: np.ndarray,
    patients: np.ndarray,
    n_boot: int,
    seed: int,
) -> dict:
    """Both tools' headline Dice on the slices both scored, and nnU-Net − mritumor for each
    definition with the patient-clustered bootstrap (same resamples for both: paired)."""
    from mritumor.evaluation.bootstrap import clustered_bootstrap_mean_difference
    from mritumor.evaluation.segmentation import per_patient_mean

    both = np.isfinite(nnunet_dice) & np.isfinite(mritumor_dice)
    a, b, tumour, patients = nnunet_dice[both], mritumor_dice[both], tumour[both], patients[both]
    result: dict = {
        "n_slices": int(both.sum()),
        "n_patients": int(len(set(patients))),
        "n_tumour_slices": int(tumour.sum()),
        "nnunet": dice_headline(a, tumour, patients, n_boot, seed),
        "mritumor": dice_headline(b, tumour, patients, n_boot, seed),
        "difference": {},
    }
    difference = result["difference"]
    difference["dice"] = clustered_bootstrap_mean_difference(a, b, patients, n_boot, seed)
    if (~tumour).any() and tumour.any():
        difference["dice_tumour_slices"] = clustered_bootstrap_mean_difference(
            a[tumour], b[tumour], patients[tumour], n_boot, seed
        )
    per_a, per_b = per_patient_mean(a, patients), per_patient_mean(b, patients)
    order = list(per_a)
    difference["dice_per_patient"] = clustered_bootstrap_mean_difference(
        [per_a[p] for p in order], [per_b[p] for p in order], order, n_boot, seed
    )
    return result


def write_run_folder(workdir: Workdir, test: pd.DataFrame, images: list[str], columns: dict, headline: dict) -> Path:  # fmt: skip
    """nnU-Net's test predictions as a run folder ``mritumor compare`` reads."""
    folder = workdir.root / RUN_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"patient_id": test["patient_id"].to_numpy(), "image": images})
    for name in ("dice", "iou", "hd95"):
        table[name] = columns[name]
    table.to_csv(folder / "predictions.csv", index=False)
    split = Path(workdir.record(CONVERSION_FILE)["split"])
    if split.is_file():
        (folder / "split.json").write_text(split.read_text())
    (folder / "test_metrics.json").write_text(json.dumps(headline, indent=2, default=_plain))
    return folder


def score(
    workdir: Workdir,
    mritumor_run: str | Path | None = None,
    score_size: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    predictions: Path | None = None,
) -> dict:
    """Score nnU-Net's test predictions (and pair them with a mritumor run); writes the run
    folder ``mritumor compare`` reads and returns the scores (``assemble`` writes the result)."""
    cases = read_cases(workdir)
    test = cases[cases["part"] == "test"].reset_index(drop=True)
    truth, predicted = read_test_masks(workdir, predictions or workdir.predictions, test)
    patients = test["patient_id"].to_numpy(dtype=str)
    run_table, size = (None, score_size)
    if mritumor_run is not None:
        run_table, run_size = read_mritumor_run(Path(mritumor_run))
        size = score_size or run_size
    grid_truth, grid_pred = on_grid(truth, size), on_grid(predicted, size)
    on_run_grid = project_report(grid_truth, grid_pred, patients, n_boot, seed)
    grid_name = (
        "native" if size is None
        else f"{size} px (--score_size)" if score_size
        else f"{size} px (the mritumor run's image_size)"
    )  # fmt: skip
    report: dict = {
        "nnunet": {
            "grid": grid_name,
            "n_slices": len(test),
            "n_patients": int(len(set(patients))),
            "headline": on_run_grid["headline"],
        }
    }
    shapes = {m.shape for m in truth}
    if size is not None and len(shapes) == 1 and shapes != {(size, size)}:
        native = project_report(np.stack(truth), np.stack(predicted), patients, n_boot, seed)
        report["nnunet_native"] = {"grid": f"native {truth[0].shape[0]}x{truth[0].shape[1]}", "headline": native["headline"]}  # fmt: skip
    images = test["image"].tolist()
    if run_table is not None:
        matched = match_run(test, run_table)
        images = [r if isinstance(r, str) else i for r, i in zip(matched["image_run"], images, strict=True)]  # fmt: skip
        tumour = grid_truth.reshape(len(test), -1).any(axis=1)
        report["mritumor_run"] = {
            "run": str(mritumor_run),
            "per_slice_dice_from": "the run's predictions.csv (dice column), no model re-run",
            "slices_of_the_test_cases_it_lacks": int(matched["dice"].isna().sum()),
        }
        report["paired"] = paired_comparison(
            np.asarray(on_run_grid["columns"]["dice"], dtype=float),
            matched["dice"].to_numpy(dtype=float),
            tumour,
            patients,
            n_boot,
            seed,
        )
        report["paired"]["grid"] = grid_name
    report["run_folder"] = str(
        write_run_folder(workdir, test, images, on_run_grid["columns"], on_run_grid["headline"])
    )
    return report


def assemble(workdir: Workdir, scored: dict, n_boot: int, out: Path | None = None) -> dict:
    """bench_nnunet.json (+ .md): every stage's record and the scores."""
    records = workdir.records
    document = {
        "benchmark": "nnU-Net v2 vs mritumor, same patients (benchmarks/bench_nnunet.py)",
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
        "score_command": _command(),
        "nnunetv2": _nnunet_version(),
        "conversion": workdir.record(CONVERSION_FILE),
        "training": _read_list(records / TRAIN_FILE),
        "prediction": json.loads((records / PREDICT_FILE).read_text())
        if (records / PREDICT_FILE).is_file()
        else None,  # fmt: skip
        "bootstrap": f"{n_boot} patient-clustered resamples, 95 % percentile intervals",
        **scored,
    }
    out = out or workdir.root / RESULT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, default=_plain))
    out.with_suffix(".md").write_text(markdown(document))
    return document


def markdown(document: dict) -> str:
    lines = [_budget_line(document), ""]
    paired = document.get("paired")
    if paired:
        lines += [
            f"Paired on {paired['n_slices']} test slices of {paired['n_patients']} patients, "
            f"grid {paired['grid']}:",
            "",
            "| Dice | nnU-Net | mritumor | nnU-Net − mritumor (95 % CI) | p |",
            "|---|---|---|---|---|",
        ]
        for key, label in PAIRED_METRICS.items():
            if key not in paired["difference"]:
                continue
            d = paired["difference"][key]
            lines.append(
                f"| {label} | {_ci_text(paired['nnunet'][key])} | {_ci_text(paired['mritumor'][key])} "
                f"| {d['estimate']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f}) | {d['p_value']:.3g} |"
            )
    for name in ("nnunet", "nnunet_native"):
        if name in document:
            head = document[name]["headline"]
            shown = ", ".join(f"{k} {_ci_text(head[k])}" for k in PAIRED_METRICS if k in head)
            lines += ["", f"nnU-Net, {document[name]['grid']}: {shown}"]
    return "\n".join(lines) + "\n"


def _budget_line(document: dict) -> str:
    predicted_with = (document.get("prediction") or {}).get("trainer")
    sessions = [
        session
        for session in document.get("training") or []
        if predicted_with in (None, session["budget"]["trainer"])
    ]
    if not sessions:
        return "nnU-Net: no training of the predicting model recorded in this workdir"
    last = sessions[-1]
    budget = last["budget"]
    seconds = sum(s.get("train_seconds", 0) for s in sessions)
    return (
        f"nnU-Net {document.get('nnunetv2')}, {budget['trainer']}: {last['epochs_done']} of "
        f"{budget['epochs']} epochs × {budget['iterations_per_epoch']} iterations, patch "
        f"{last['plan']['patch_size']}, batch {last['plan']['batch_size']}, {budget['device']} "
        f"({last['machine']}), training {seconds / 60:.1f} min over {len(sessions)} command(s)"
    )


def _ci_text(interval: dict | None) -> str:
    if not interval or interval.get("value") is None:
        return "–"
    low, high = interval.get("low"), interval.get("high")
    bounds = f" ({low:.3f}–{high:.3f})" if low is not None and high is not None else ""
    return f"{interval['value']:.3f}{bounds}"


# --------------------------------------------------------------------------- helpers


def machine_description(device: str = "cpu") -> str:
    """The GPU's name on cuda, else lscpu's model name, with the cores this process sees."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():  # fmt: skip
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"  # fmt: skip


def _nanmean(values) -> float | None:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def _counts(values: pd.Series) -> dict:
    return {str(k): int(v) for k, v in values.value_counts().items()}


def _read_list(path: Path) -> list:
    return json.loads(path.read_text()) if path.is_file() else []


def _command() -> str:
    return shlex.join([sys.executable, *sys.argv])


def _commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()


def _nnunet_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:
        return None


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------- command line


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data_root", required=True, help="any data mritumor reads")
    parser.add_argument("--split", required=True, help="a mritumor run's split.json (its patients)")
    parser.add_argument("--name", default=None, help="dataset name (default: data_root's folder)")
    parser.add_argument("--format", default=None, help="reader, as mritumor's --format")


def add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda when there is one")  # fmt: skip
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, nnU-Net's processes")  # fmt: skip


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=None, help="budget: epochs")
    parser.add_argument("--iterations_per_epoch", type=int, default=None, help="budget: training batches per epoch")  # fmt: skip
    parser.add_argument("--val_iterations", type=int, default=None, help="validation batches per epoch (default I/5)")  # fmt: skip
    parser.add_argument("--default", action="store_true", help="nnU-Net's own 1000 × 250 schedule (GPU)")  # fmt: skip
    parser.add_argument("--time_budget_min", type=float, default=None, help="budget: the whole train command in minutes; the epochs (of --iterations_per_epoch) follow from the measured epoch time")  # fmt: skip
    parser.add_argument("--continue", dest="resume", action="store_true", help="nnU-Net's --c: continue the run with the same budget")  # fmt: skip
    parser.add_argument("--stop_after_min", type=float, default=None, help="stop after the epoch that ends past this many minutes (checkpoint kept for --continue)")  # fmt: skip
    parser.add_argument("--augment_processes", type=int, default=None, help="nnU-Net's augmentation workers (nnUNet_n_proc_DA; 0: in the main process)")  # fmt: skip
    parser.add_argument("--save_every", type=int, default=None, help="epochs between nnU-Net's checkpoint_latest (its default 50)")  # fmt: skip
    parser.add_argument("--no_final_validation", action="store_true", help="skip nnU-Net's prediction of the validation cases after training")  # fmt: skip
    parser.add_argument("--replan", action="store_true", help="plan and preprocess again")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="final", choices=("final", "best"))
    parser.add_argument("--trainer", default=None, help="trainer folder name, e.g. nnUNetTrainer_12ep_5it (default: the newest trained)")  # fmt: skip
    parser.add_argument("--no_mirroring", action="store_true", help="no mirroring test-time augmentation")  # fmt: skip


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mritumor_run", default=None, help="a train-multitask run folder to pair with")  # fmt: skip
    parser.add_argument("--score_size", type=int, default=None, help="grid to score on (default: the run's image_size)")  # fmt: skip
    parser.add_argument("--n_boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help=f"result JSON (default WORKDIR/{RESULT_FILE})")  # fmt: skip


def resolve_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workdir", type=Path, required=True, help="all files of this benchmark")
    common.add_argument("--dataset_id", type=int, default=DEFAULT_DATASET_ID, help="nnU-Net dataset id (convert)")  # fmt: skip
    stages = parser.add_subparsers(dest="stage", required=True)
    adders = {
        "convert": (add_convert_arguments,),
        "train": (add_compute_arguments, add_train_arguments),
        "predict": (add_compute_arguments, add_predict_arguments),
        "score": (add_score_arguments,),
        "all": (add_convert_arguments, add_compute_arguments, add_train_arguments,
                add_predict_arguments, add_score_arguments),
    }  # fmt: skip
    helps = {
        "convert": "catalog + split.json → nnU-Net raw dataset and splits_final.json",
        "train": "nnU-Net planning, preprocessing and training of fold 0 within a budget",
        "predict": "nnU-Net's predictor on the test patients' slices",
        "score": "the project's Dice definitions, paired with a mritumor run",
        "all": "the four stages in order",
    }
    for name, functions in adders.items():
        stage = stages.add_parser(name, parents=[common], help=helps[name], description=helps[name])
        for add in functions:
            add(stage)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    workdir = Workdir(args.workdir)
    if hasattr(args, "device"):
        args.device = resolve_device(args.device)
    result: dict = {}
    if args.stage in ("convert", "all"):
        result["conversion"] = convert(
            args.data_root, args.split, workdir, args.dataset_id, args.name, args.format
        )
        print(json.dumps(result["conversion"]["parts"]))
    if args.stage in ("train", "all"):
        result["training"] = train(workdir, args)
    if args.stage in ("predict", "all"):
        result["prediction"] = predict(workdir, args)
    if args.stage in ("score", "all"):
        scored = score(workdir, args.mritumor_run, args.score_size, args.n_boot, args.seed)
        result = assemble(workdir, scored, args.n_boot, args.out)
        print(markdown(result))
    return result


if __name__ == "__main__":
    main()
