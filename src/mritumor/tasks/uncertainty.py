"""What the tasks fit for "knowing when not to answer" once training is over: the network's
embeddings of the training units (un-augmented) for the out-of-distribution detector, and its
validation predictions for that detector's threshold and the conformal scores
(:mod:`mritumor.evaluation.uncertainty` holds the statistics; this module only runs the
network over the right data)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from mritumor.config import HierarchicalConfig, MultitaskConfig
from mritumor.data.loading.datasets import PatientBagDataset, SliceDataset, collate_bags, identity
from mritumor.evaluation.conformal import calibration_scores
from mritumor.evaluation.uncertainty import fit_uncertainty, mondrian_scores
from mritumor.inference.loops import predict_bags
from mritumor.inference.refit import slice_uncertainty
from mritumor.models.hierarchical import TwoStepClassifier, hierarchical_probabilities
from mritumor.models.multitask import MultiTaskNet


def fit_slice_uncertainty(
    model: MultiTaskNet, loaders: dict, data, temperature: float, config: MultitaskConfig
) -> dict:
    """OOD detector on the training slices' feature statistics (un-augmented), its threshold
    and the conformal scores on the validation slices and patients
    (:func:`mritumor.inference.refit.slice_uncertainty`), per class with
    ``--conformal_mondrian``."""
    train_rows = loaders["train_dataset"].rows
    plain = SliceDataset(data.cache, train_rows, loaders["train_dataset"].labels, identity)
    return slice_uncertainty(
        model,
        DataLoader(plain, batch_size=config.batch_size),
        loaders["val"],
        data.cache.catalog.table["patient_id"].to_numpy(),
        temperature,
        config.coverage,
        config.conformal_method,
        mondrian=getattr(config, "conformal_mondrian", False),  # a config from before the flag
    )


def fit_patient_uncertainty(
    model: TwoStepClassifier, loaders: dict, temperature: float, config: HierarchicalConfig
) -> dict:
    """OOD detector on the training patients' pooled embeddings (evaluation bags, no
    augmentation), threshold and conformal scores of tumour type on the validation patients,
    and conformal scores of the end-to-end grade where grades are known (both per class with
    ``--conformal_mondrian``)."""
    mondrian = getattr(config, "conformal_mondrian", False)  # a config from before the flag
    source = loaders["train_dataset"]
    plain = PatientBagDataset(
        source.cache,
        source.patient_ids,
        source.labels,
        source.bag_size,
        "uniform" if source.bag_policy == "random" else source.bag_policy,
        slices=config.bag_slices,
    )
    train = predict_bags(
        model, DataLoader(plain, batch_size=config.batch_size, collate_fn=collate_bags)
    )
    val = predict_bags(model, loaders["val"])
    val_probs = {
        k: v.numpy()
        for k, v in hierarchical_probabilities(
            val["type_logits"], val["grade_logits"], temperature
        ).items()
    }
    state = fit_uncertainty(
        train["patient_embedding"],
        train["type_true"],
        val["patient_embedding"],
        val_probs["type"],
        val["type_true"],
        coverage=config.coverage,
        method=config.conformal_method,
        feature_name="patient_embedding",  # what it scores (the name is informational here)
        mondrian=mondrian,
    )
    if (val["grade_true"] >= 0).any():
        method = state["conformal"]["method"]
        grade_probs = val_probs["grade_e2e_normalised"]
        state["grade_conformal"] = {
            "method": method,
            "coverage": config.coverage,
            "scores": torch.as_tensor(calibration_scores(grade_probs, val["grade_true"], method)),
            "mondrian": bool(mondrian),
        }
        if mondrian:
            state["grade_conformal"]["class_scores"] = mondrian_scores(
                grade_probs, val["grade_true"], method, config.coverage, "patients (grade)"
            )
    return state
