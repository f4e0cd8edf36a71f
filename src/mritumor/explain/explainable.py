"""The model side of explanation, shared by ``mritumor explain`` and ``mritumor predict
--explain``: a loaded checkpoint as an :class:`ExplainableModel` (slice classifier, Grad-CAM
layer, bag model), the patient's predicted class and slice ranking (:func:`rank_slices`) and the
pixel maps of chosen slices (:func:`compute_maps`). Figures and tables are written elsewhere
(:mod:`mritumor.explain.patients`, :mod:`mritumor.explain.run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mritumor.data.loading.cache import Preprocessing
from mritumor.errors import MritumorError
from mritumor.explain.attribution import (
    BagClassifier,
    gradcam_maps,
    hierarchical_bag_classifier,
    hierarchical_slice_classifier,
    last_conv_block,
    occlusion_map,
    slice_occlusion,
)
from mritumor.models.loading import LoadedModel

METHODS = ("occlusion", "gradcam")


@dataclass
class ExplainableModel:
    """What explanation needs from a checkpoint, whatever its task."""

    task: str
    class_names: list[str]
    slice_classifier: nn.Module  # (B, C, S, S) -> logits (B, K)
    gradcam_layer: nn.Module | None  # inside slice_classifier; None: no Grad-CAM
    # patient-level models only: (B, N, C, S, S), mask (B, N) -> dict with "type_logits" (B, K)
    # and "slice_weights" (B, N), the contract of TwoStepClassifier
    bag_model: nn.Module | None
    preprocessing: Preprocessing
    bag_size: int = 8
    bag_policy: str = "uniform"
    temperature: float = 1.0
    test_patients: list[str] = field(default_factory=list)

    @property
    def bag_classifier(self) -> BagClassifier | None:
        return None if self.bag_model is None else hierarchical_bag_classifier(self.bag_model)

    def to(self, device: torch.device) -> ExplainableModel:
        self.slice_classifier.to(device)
        if self.bag_model is not None:
            self.bag_model.to(device)
        return self


class ClassLogits(nn.Module):
    """A multi-task model's classification output as a slice classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.model(images)
        logits = outputs.get("class_logits") if isinstance(outputs, dict) else None
        if logits is None:
            raise MritumorError(
                "this multitask checkpoint has no classification head (segmentation only); "
                "`mritumor explain` explains class predictions"
            )
        return logits


def explainable_model(loaded: LoadedModel, temperature: float | None = None) -> ExplainableModel:
    """The loaded model as explanation wants it (the same modules: no second load of the
    weights); ``temperature`` defaults to the checkpoint's."""
    temperature = loaded.temperature if temperature is None else temperature
    common = {
        "task": loaded.task,
        "class_names": list(loaded.labels.types),
        "gradcam_layer": last_conv_block(loaded.model),
        "preprocessing": loaded.preprocessing,
        "temperature": temperature,
        "test_patients": loaded.test_patients,
    }
    if loaded.task == "hierarchical":
        return ExplainableModel(
            slice_classifier=hierarchical_slice_classifier(loaded.model),
            bag_model=loaded.model,
            bag_size=loaded.bag_size,
            bag_policy=loaded.bag_policy,  # deterministic, as in evaluation
            **common,
        )
    return ExplainableModel(slice_classifier=ClassLogits(loaded.model), bag_model=None, **common)


@dataclass(frozen=True)
class Settings:
    methods: list[str]
    window: int
    stride: int
    baseline: str | float
    top_slices: int
    pointing_tolerance: int


def default_window(image_size: int) -> int:
    """An eighth of the slice side (16 px at 128, 28 px at 224): about a small tumour's size."""
    return max(2, round(image_size / 8))


@torch.no_grad()
def rank_slices(
    model: ExplainableModel, images: torch.Tensor
) -> tuple[int, float, dict[str, np.ndarray]]:
    """The patient's predicted class, its probability, and per-slice importance columns."""
    n = images.shape[0]
    nan = np.full(n, np.nan)
    if model.bag_model is not None:
        mask = torch.ones(1, n, dtype=torch.bool, device=images.device)
        outputs = model.bag_model(images[None], mask)
        probabilities = torch.softmax(outputs["type_logits"].float() / model.temperature, dim=-1)[0]
        target = int(probabilities.argmax())
        attention = outputs["slice_weights"][0].float().cpu().numpy()
        drops = slice_occlusion(model.bag_classifier, images, target, model.temperature).numpy()
        order_key = np.where(np.isnan(drops), -np.inf, drops)
        order = np.lexsort((-attention, -order_key))
        return (
            target,
            float(probabilities[target]),
            {"attention": attention, "drops": drops, "slice_probability": nan, "order": order},
        )
    logits = torch.cat([model.slice_classifier(chunk) for chunk in images.split(32)])
    per_slice = torch.softmax(logits.float() / model.temperature, dim=-1)
    patient = per_slice.mean(dim=0)
    target = int(patient.argmax())
    own = per_slice[:, target].cpu().numpy()
    return (
        target,
        float(patient[target]),
        {
            "attention": nan,
            "drops": nan,
            "slice_probability": own,
            "order": np.argsort(-own, kind="stable"),
        },
    )


def compute_maps(
    model: ExplainableModel, images: torch.Tensor, target: int, settings: Settings
) -> dict[str, torch.Tensor]:
    """Per method, (n, H, W) maps of the given slices for class ``target``."""
    maps = {}
    if "occlusion" in settings.methods:
        maps["occlusion"] = torch.stack(
            [
                occlusion_map(
                    model.slice_classifier,
                    image,
                    target,
                    settings.window,
                    settings.stride,
                    settings.baseline,
                    temperature=model.temperature,
                )
                for image in images
            ]
        )
    if "gradcam" in settings.methods:
        maps["gradcam"] = gradcam_maps(
            model.slice_classifier, model.gradcam_layer, images, [target] * len(images)
        )
    return maps
