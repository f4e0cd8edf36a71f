"""A trained checkpoint → its network in eval mode, with the labels and preprocessing it needs.

The one place that turns a mritumor checkpoint into a network and dispatches on
``checkpoint["task"]`` (``hierarchical`` | ``multitask``; a ``pretrain`` (SimCLR) checkpoint is
refused, saying what it is). Training (:mod:`mritumor.tasks`), ``evaluate``, ``predict``,
``explain`` and ``export`` all load through it.

Layering: this module imports torch, :mod:`mritumor.checkpoints`, the model packages and the
two plain records a network comes with (:class:`~mritumor.data.loading.labels.LabelSpace`,
:class:`~mritumor.data.loading.cache.Preprocessing`), never Lightning or :mod:`mritumor.tasks`: a
one-patient prediction must not pay Lightning's seconds of start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from mritumor.checkpoints import CheckpointError, load_checkpoint
from mritumor.data.loading.cache import Preprocessing
from mritumor.data.loading.labels import LabelSpace
from mritumor.models.backbones import encoder_from_config, input_statistics
from mritumor.models.hierarchical import TwoStepClassifier
from mritumor.models.multitask import MultiTaskNet, build_multitask_model

TASKS = ("hierarchical", "multitask")
REQUIRED = ("model_state", "encoder_config", "model_config", "labels")


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

    @property
    def uncertainty(self) -> dict | None:
        """The OOD/conformal state fitted at the end of training (None: an older checkpoint)."""
        return self.checkpoint.get("uncertainty")

    @property
    def test_patients(self) -> list[str]:
        """The test part of the training run's split (empty when it recorded none)."""
        return list((self.checkpoint.get("split") or {}).get("test") or [])

    def describe(self) -> str:
        if self.task == "hierarchical":
            return "a hierarchical (type → grade) checkpoint"
        return f"a multi-task checkpoint of variant {self.variant}"


def load_model(path: str | Path) -> LoadedModel:
    """The checkpoint at ``path`` (loaded safely, see :mod:`mritumor.checkpoints`) as a model in
    eval mode. Checkpoints that hold no classifier or segmenter are refused, saying what they are."""
    path = Path(path)
    return loaded_from_checkpoint(load_checkpoint(path), path)


def loaded_from_checkpoint(checkpoint: dict, path: str | Path) -> LoadedModel:
    """:func:`load_model` for a checkpoint already in memory (``path`` names it in messages)."""
    path = Path(path)
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
    missing = [k for k in REQUIRED if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: not a complete {task} checkpoint")
    common = {
        "task": task,
        "labels": LabelSpace.from_dict(checkpoint["labels"]),
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
                model=hierarchical_network(checkpoint),
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
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: the weights do not fit the checkpoint's own config ({error})"
        ) from error


def preprocessing_of(checkpoint: dict) -> Preprocessing:
    """The exact preprocessing of the training cache (image size, channels, clipping, intensity
    method); a key the checkpoint lacks gets today's default, which was then the only choice
    (checkpoints before ``intensity`` existed were all ``percentile``)."""
    values = checkpoint.get("preprocessing") or {}
    known = {k: v for k, v in values.items() if k in Preprocessing.__dataclass_fields__}
    return Preprocessing(**known)


def network_from_checkpoint(checkpoint: dict) -> nn.Module:
    """The network of a ``train-hierarchical`` or ``train-multitask`` checkpoint, in eval mode."""
    if checkpoint.get("task") == "multitask":
        return multitask_network(checkpoint)
    return hierarchical_network(checkpoint)


def hierarchical_network(checkpoint: dict) -> TwoStepClassifier:
    """The network a ``train-hierarchical`` checkpoint holds, in eval mode."""
    _check_task(checkpoint, "hierarchical")
    labels = LabelSpace.from_dict(checkpoint["labels"])
    encoder = encoder_from_config(checkpoint["encoder_config"])
    model = TwoStepClassifier(encoder, labels.allowed(), **checkpoint["model_config"])
    _load_state(model, checkpoint)
    return model.eval()


def multitask_network(checkpoint: dict) -> MultiTaskNet:
    """The network a ``train-multitask`` checkpoint holds, in eval mode."""
    _check_task(checkpoint, "multitask")
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
        decoder=config.get("decoder", "fcn"),  # checkpoints before the U-Net decoder: fcn
    )
    normalisation = checkpoint["encoder_config"].get("input_normalisation", "none")
    if normalisation != "none":  # ImageNet-initialised networks expect standardised inputs
        mean, std = input_statistics(normalisation, config["in_channels"])
        model.encoder.input_mean, model.encoder.input_std = mean, std
        model.encoder.config = replace(model.encoder.config, input_normalisation=normalisation)
    _load_state(model, checkpoint)
    return model.eval()


def _load_state(model: nn.Module, checkpoint: dict) -> None:
    try:
        model.load_state_dict(checkpoint["model_state"])
    except RuntimeError as error:
        raise CheckpointError(
            f"the checkpoint's weights do not fit its own config ({error})"
        ) from error


def _check_task(checkpoint: dict, task: str) -> None:
    found = checkpoint.get("task")
    if found != task:
        raise CheckpointError(
            f"not a {task} checkpoint (task {found!r}); it was made by another command"
        )
