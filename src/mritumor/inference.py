"""A trained checkpoint, ready to use: the network, its preprocessing, labels and temperature.

:func:`load_model` is the one place that dispatches on ``checkpoint["task"]``
(``hierarchical`` | ``multitask``); ``mritumor evaluate``, ``predict`` and ``export`` all start
from the :class:`LoadedModel` it returns. The networks are rebuilt here from the model
packages only, not from :mod:`mritumor.tasks` (whose modules import Lightning, seconds of
start-up that a one-patient prediction should not pay); ``tests/test_predict.py`` checks that
both give the same network.

:func:`evaluate_checkpoint` is ``mritumor evaluate``: external validation of a checkpoint on any
dataset the data layer reads, with the same artifacts as the end of training.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from mritumor.checkpoints import CheckpointError, load_checkpoint
from mritumor.data.cache import Preprocessing
from mritumor.data.labels import LabelSpace
from mritumor.errors import DataError

log = logging.getLogger(__name__)
TASKS = ("hierarchical", "multitask")


@dataclass
class LoadedModel:
    """What every inference command needs from a checkpoint."""

    task: str  # "hierarchical" | "multitask"
    model: nn.Module  # in eval mode, on the CPU
    labels: LabelSpace
    preprocessing: Preprocessing
    temperature: float  # fitted on validation at the end of training (1.0: none)
    path: Path
    checkpoint: dict = field(repr=False)
    bag_size: int | None = None  # hierarchical: slices per patient bag at evaluation
    bag_policy: str | None = None  # hierarchical: "uniform" or "all" (random → uniform)
    variant: str | None = None  # multitask: A–G

    @property
    def classifies(self) -> bool:
        return self.task == "hierarchical" or bool(getattr(self.model, "classifies", False))

    @property
    def segments(self) -> bool:
        return self.task == "multitask" and bool(getattr(self.model, "segments", False))

    def describe(self) -> str:
        if self.task == "hierarchical":
            return "a hierarchical (type → grade) checkpoint"
        return f"a multi-task checkpoint of variant {self.variant}"


def load_model(path: str | Path) -> LoadedModel:
    """The checkpoint at ``path`` (loaded safely, see :mod:`mritumor.checkpoints`) as a model in
    eval mode. Checkpoints that hold no classifier or segmenter are refused, saying what they are."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    task = checkpoint.get("task")
    if task not in TASKS:
        if "simclr_state" in checkpoint:
            raise CheckpointError(
                f"{path} is a `mritumor pretrain` checkpoint: it holds an encoder only, no "
                "classifier. Use the best.pt of train-hierarchical or train-multitask."
            )
        raise CheckpointError(
            f"{path} is not a model checkpoint of mritumor (task {task!r}); expected the best.pt "
            "of train-hierarchical or train-multitask"
        )
    missing = [
        k
        for k in ("model_state", "encoder_config", "model_config", "labels")
        if k not in checkpoint
    ]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: not a complete {task} checkpoint")
    labels = LabelSpace.from_dict(checkpoint["labels"])
    common = {
        "task": task,
        "labels": labels,
        "preprocessing": preprocessing_of(checkpoint),
        "temperature": float(checkpoint.get("temperature") or 1.0),
        "path": path,
        "checkpoint": checkpoint,
    }
    try:
        if task == "hierarchical":
            bag = checkpoint.get("bag") or {}
            policy = bag.get("bag_policy", "uniform")
            return LoadedModel(
                model=hierarchical_network(checkpoint, labels),
                bag_size=int(bag.get("bag_size", 8)),
                # evaluation bags are deterministic, as at the end of training
                bag_policy="uniform" if policy == "random" else policy,
                **common,
            )
        return LoadedModel(
            model=multitask_network(checkpoint),
            variant=checkpoint["model_config"]["variant"],
            **common,
        )
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: the weights do not fit the checkpoint's own config ({error})"
        ) from error


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode ``model`` with every BatchNorm that directly follows a convolution
    in a ``Sequential`` folded into that convolution (``torch.nn.utils.fusion``), the norm left
    as an ``Identity`` so module names and indices stay. Same outputs up to float rounding, and
    1.4–1.9× faster CPU inference for small_cnn/mobilenet_v2 (``benchmarks/RESULTS.md``).
    Pairs outside a ``Sequential`` (ResNet's ``conv1``/``bn1``) are left as they are."""
    from copy import deepcopy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model: training norms use batch statistics")  # fmt: skip
    folded = deepcopy(model)
    for container in folded.modules():
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = container._modules[first], container._modules[second]
            if (
                isinstance(conv, nn.Conv2d)
                and type(norm) is nn.BatchNorm2d
                and norm.track_running_stats
                and conv.out_channels == norm.num_features
            ):
                container._modules[first] = fuse_conv_bn_eval(conv, norm)
                container._modules[second] = nn.Identity()
    return folded


def preprocessing_of(checkpoint: dict) -> Preprocessing:
    """The exact preprocessing of the training cache (image size, channels, clipping)."""
    values = checkpoint.get("preprocessing") or {}
    known = {k: v for k, v in values.items() if k in Preprocessing.__dataclass_fields__}
    return Preprocessing(**known)


def hierarchical_network(checkpoint: dict, labels: LabelSpace) -> nn.Module:
    """As :func:`mritumor.tasks.hierarchical.model_from_checkpoint`, without Lightning."""
    from mritumor.models.backbones import encoder_from_config
    from mritumor.models.hierarchical import TwoStepClassifier

    encoder = encoder_from_config(checkpoint["encoder_config"])
    model = TwoStepClassifier(encoder, labels.allowed(), **checkpoint["model_config"])
    model.load_state_dict(checkpoint["model_state"])
    return model.eval()


def multitask_network(checkpoint: dict) -> nn.Module:
    """As :func:`mritumor.tasks.multitask.model_from_checkpoint`, without Lightning."""
    from dataclasses import replace

    from mritumor.models.backbones import input_statistics
    from mritumor.models.multitask import build_multitask_model

    config = checkpoint["model_config"]
    model = build_multitask_model(
        config["variant"],
        config["n_classes"],
        config["backbone"],
        config["in_channels"],
        config["image_size"],
        pretrained=False,
        hidden_dim=config["hidden_dim"],
        dropout=config["dropout"],
    )
    normalisation = checkpoint["encoder_config"].get("input_normalisation", "none")
    if normalisation != "none":  # ImageNet-initialised networks expect standardised inputs
        mean, std = input_statistics(normalisation, config["in_channels"])
        model.encoder.input_mean, model.encoder.input_std = mean, std
        model.encoder.config = replace(model.encoder.config, input_normalisation=normalisation)
    model.load_state_dict(checkpoint["model_state"])
    return model.eval()


# ----------------------------------------------------------------------------- checks on data


def check_channels(found: int, loaded: LoadedModel, where: str) -> None:
    """Refuse data whose channel count differs from the training data's: the cache would
    silently average RGB into gray (or repeat gray into RGB), which the model never saw."""
    expected = loaded.preprocessing.channels
    if found != expected:
        raise DataError(
            f"{where} has {found}-channel images, but the model was trained on {expected}-channel "
            f"images (preprocessing.channels = {expected} in {loaded.path.name}); use data of the "
            "same kind (grayscale vs RGB) as the training data"
        )


def check_types(types, loaded: LoadedModel, where: str) -> None:
    """Tumour types the model cannot output would have no class index: refused, named."""
    unknown = sorted(set(map(str, types)) - set(loaded.labels.types))
    if unknown and loaded.classifies:
        raise DataError(
            f"{where} has tumour type(s) the model does not know: {', '.join(unknown)}; the model "
            f"knows {', '.join(loaded.labels.types)}. Evaluate on patients of those types only "
            "(e.g. with a manifest CSV listing them)."
        )


def unknown_grades(table, loaded: LoadedModel) -> dict[str, int]:
    """Grades of the data the model cannot output → number of patients; they are treated as
    unknown (no grade metric), exactly like a missing grade."""
    known = table[table["grade"].notna()]
    odd = known[~known["grade"].astype(str).isin(set(loaded.labels.grades))]
    return {str(g): int(n) for g, n in odd.groupby("grade")["patient_id"].nunique().items()}


# ----------------------------------------------------------------------------- evaluate


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_root: str | Path,
    outdir: str | Path,
    split_file: str | Path | None = None,
    format: str | None = None,
    strict: bool = False,
    batch_size: int = 8,
    n_boot: int = 1000,
    seed: int = 0,
    calibrated: bool = True,
    n_overlays: int = 8,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """The full test evaluation of a trained model on ``data_root``: every patient (or the test
    part of ``split_file``), the checkpoint's preprocessing, bags and temperature; the same
    artifacts as at the end of training, plus ``evaluation.json`` (what was evaluated)."""
    from mritumor.data.cache import SliceCache, infer_channels
    from mritumor.data.readers import read_catalog
    from mritumor.data.splits import Split, load_split
    from mritumor.resources import check_writable

    outdir = check_writable(outdir, "--outdir")
    loaded = load_model(checkpoint)
    catalog = read_catalog(data_root, format=format, strict=strict)
    check_channels(infer_channels(catalog), loaded, f"--data_root {data_root}")
    if split_file:
        split = load_split(split_file, catalog.table)
        patients = [p for p in split.test if p in set(catalog.patients)]
        strategy = f"test part of {split_file}"
    else:
        patients = catalog.patients
        strategy = "external: every patient of the data is a test patient"
    if not patients:
        raise DataError(f"no test patient of --split_file {split_file} is in {data_root}")
    catalog = catalog.subset(patients)
    trained_on = set((loaded.checkpoint.get("split") or {}).get("train") or []) | set(
        (loaded.checkpoint.get("split") or {}).get("val") or []
    )
    seen = [p for p in patients if p in trained_on]
    if seen:
        log.warning(
            "%d of the %d patients evaluated were training or validation patients of this "
            "checkpoint (e.g. %s): their metrics are optimistic; --split_file SPLIT.json of the "
            "training run evaluates its test part only",
            len(seen),
            len(patients),
            ", ".join(seen[:3]),
        )
    check_types(catalog.table["tumor_type"].unique(), loaded, f"--data_root {data_root}")
    odd_grades = unknown_grades(catalog.table, loaded) if loaded.task == "hierarchical" else {}
    if odd_grades:
        log.warning(
            "grade(s) unknown to the model (it knows %s): %s; these patients' grade is treated "
            "as unknown (no grade metric)",
            ", ".join(loaded.labels.grades) or "none",
            ", ".join(f"{g} ({n} patient(s))" for g, n in odd_grades.items()),
        )
    cache = SliceCache.build(
        catalog, loaded.preprocessing, cache_dir=cache_dir, strict=strict, progress=progress
    )
    patients = cache.catalog.patients  # patients whose every slice failed to decode are gone
    temperature = loaded.temperature if calibrated else 1.0
    if loaded.task == "hierarchical":
        result = _evaluate_hierarchical(loaded, cache, patients, outdir, temperature, batch_size, n_boot, seed)  # fmt: skip
    else:
        result = _evaluate_multitask(
            loaded, cache, patients, outdir, temperature, batch_size, n_boot, seed, n_overlays
        )
    Split(train=[], val=[], test=list(patients), strategy=strategy, seed=seed).save(
        outdir / "split.json"
    )
    summary = {
        "checkpoint": str(Path(checkpoint).absolute()),
        "task": loaded.task,
        "variant": loaded.variant,
        "data_root": str(Path(data_root).absolute()),
        "split": strategy,
        "n_patients": len(patients),
        "n_slices": len(cache.catalog),
        "skipped_items": len(cache.catalog.problems),
        "temperature": temperature,
        "calibrated": calibrated and temperature != 1.0,
        "unknown_grades": odd_grades,
        "preprocessing": loaded.checkpoint.get("preprocessing"),
        "bag": {"bag_size": loaded.bag_size, "bag_policy": loaded.bag_policy}
        if loaded.task == "hierarchical"
        else None,
        "model_made": (loaded.checkpoint.get("metadata") or {}).get("date"),
    }
    (outdir / "evaluation.json").write_text(json.dumps(summary, indent=2))
    return {**result, "evaluation": summary}


def _evaluate_hierarchical(loaded, cache, patients, outdir, temperature, batch_size, n_boot, seed):
    from torch.utils.data import DataLoader

    from mritumor.data.datasets import PatientBagDataset, collate_bags
    from mritumor.evaluation.hierarchical import evaluate_hierarchical
    from mritumor.tasks.hierarchical import predict_bags  # the loop training's test part uses

    dataset = PatientBagDataset(cache, patients, loaded.labels, loaded.bag_size, loaded.bag_policy)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_bags)
    prediction = predict_bags(loaded.model, loader)
    return evaluate_hierarchical(
        prediction,
        loaded.labels,
        outdir,
        temperature=temperature,
        n_boot=n_boot,
        seed=seed,
        catalog=cache.catalog,
    )


def _evaluate_multitask(
    loaded, cache, patients, outdir, temperature, batch_size, n_boot, seed, n_overlays
):
    from torch.utils.data import DataLoader

    from mritumor.data.datasets import SliceDataset, rows_of_patients
    from mritumor.evaluation.multitask import evaluate_multitask
    from mritumor.tasks.multitask import predict_slices  # the loop training's test part uses

    dataset = SliceDataset(cache, rows_of_patients(cache, patients), loaded.labels)
    prediction = predict_slices(loaded.model, DataLoader(dataset, batch_size=batch_size))
    return evaluate_multitask(
        prediction,
        loaded.labels,
        outdir,
        cache=cache,
        variant=loaded.variant,
        temperature=temperature,
        n_boot=n_boot,
        seed=seed,
        n_overlays=n_overlays,
    )
