"""Raw network outputs over a data loader: the loops training's test part, ``evaluate`` and
temperature fitting share. Plain torch (no Lightning), so ``mritumor evaluate`` does not import
the training stack. ``engine``: run the network with an engine of
:mod:`mritumor.inference.engines` (ONNX Runtime) instead of ``model`` itself."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from mritumor.models.hierarchical import TwoStepClassifier
from mritumor.models.multitask import MultiTaskNet


def _engine_forward(engine):
    def forward(*inputs: torch.Tensor) -> dict:
        outputs = engine.run(*(t.numpy() for t in inputs))
        return {name: torch.from_numpy(value) for name, value in outputs.items()}

    return forward


@torch.no_grad()
def predict_bags(model: TwoStepClassifier, loader: DataLoader, engine=None) -> dict:
    """Raw outputs for every patient of a loader, in dataset order."""
    model.eval()
    device = next(model.parameters()).device if engine is None else torch.device("cpu")
    forward = model if engine is None else _engine_forward(engine)
    type_logits, grade_logits, weights, rows, embeddings = [], [], [], [], []
    for batch in loader:
        outputs = forward(batch["images"].to(device), batch["mask"].to(device))
        type_logits.append(outputs["type_logits"].float().cpu())
        grade_logits.append(outputs["grade_logits"].float().cpu())
        if "patient_embedding" in outputs:  # what out-of-distribution scores are fitted on
            embeddings.append(outputs["patient_embedding"].float().cpu().numpy())
        for i in range(batch["mask"].shape[0]):
            real = batch["mask"][i]
            weights.append(outputs["slice_weights"][i][real.to(device)].float().cpu().numpy())
            rows.append(batch["rows"][i][real].numpy())
    dataset = loader.dataset
    return {
        "patient_ids": list(dataset.patient_ids),
        "type_true": np.asarray(dataset.types),
        "grade_true": np.asarray(dataset.grades),
        "type_logits": torch.cat(type_logits) if type_logits else torch.empty(0),
        "grade_logits": torch.cat(grade_logits) if grade_logits else torch.empty(0),
        "slice_weights": weights,
        "slice_rows": rows,
        "patient_embedding": np.concatenate(embeddings) if embeddings else None,
    }


@torch.no_grad()
def predict_slices(model: MultiTaskNet, loader: DataLoader, engine=None) -> dict:
    """Raw outputs for every slice of a loader, in dataset order: class logits (N, K) and
    predicted masks (N, S, S) bool, with true labels and masks."""
    model.eval()
    device = next(model.parameters()).device if engine is None else torch.device("cpu")
    forward = model if engine is None else _engine_forward(engine)
    logits, masks, true_masks, has_mask, rows, types = [], [], [], [], [], []
    embeddings, statistics = [], []
    for batch in loader:
        outputs = forward(batch["image"].to(device))
        if "class_logits" in outputs:
            logits.append(outputs["class_logits"].float().cpu())
        if "class_embedding" in outputs:  # what out-of-distribution scores are fitted on
            embeddings.append(outputs["class_embedding"].float().cpu().numpy())
        if "ood_features" in outputs:
            statistics.append(outputs["ood_features"].float().cpu().numpy())
        if "mask_logits" in outputs:
            masks.append((outputs["mask_logits"][:, 0] > 0).cpu().numpy())
        true_masks.append(batch["mask"][:, 0].numpy().astype(bool))
        has_mask.append(batch["has_mask"].numpy())
        rows.append(batch["row"].numpy())
        types.append(batch["tumor_type"].numpy())
    empty = np.zeros(0)
    return {
        "rows": np.concatenate(rows) if rows else empty.astype(int),
        "type_true": np.concatenate(types) if types else empty.astype(int),
        "class_logits": torch.cat(logits) if logits else None,
        "class_embedding": np.concatenate(embeddings) if embeddings else None,
        "ood_features": np.concatenate(statistics) if statistics else None,
        "pred_masks": np.concatenate(masks) if masks else None,
        "true_masks": np.concatenate(true_masks) if true_masks else None,
        "has_mask": np.concatenate(has_mask) if has_mask else empty.astype(bool),
    }
