"""``mritumor predict --explain``: heat maps of :mod:`mritumor.explain` for new patients, from
the model predict has already loaded (no second load of the weights). Uses the explain
package's model-level pieces (:mod:`mritumor.explain.explainable`), not its command."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mritumor.inference.inputs import slice_stem
from mritumor.inference.predictor import PatientPrediction
from mritumor.models.loading import LoadedModel


def explain_patient(explainer, prediction: PatientPrediction, folder: Path) -> list[Path]:
    """Heat maps of :mod:`mritumor.explain` for the patient's predicted type: pixel occlusion
    and Grad-CAM overlays of the 3 most important slices, and the slice-importance bars."""
    import torch

    from mritumor.explain.explainable import compute_maps, rank_slices
    from mritumor.explain.plots import draw_overlays, draw_slice_importance

    model, settings = explainer
    images = torch.as_tensor(prediction.images)  # the predictor keeps numpy arrays
    target, probability, importance = rank_slices(model, images)
    predicted = model.class_names[target]
    top = [int(i) for i in importance["order"][: settings.top_slices]]
    maps = compute_maps(model, images[top], target, settings)
    names = [slice_stem(ref) for ref in prediction.used]
    folder.mkdir(parents=True, exist_ok=True)
    written, saved = [], {}
    for j, i in enumerate(top):
        slice_maps = {name: values[j].numpy() for name, values in maps.items()}
        saved.update({f"{name}_{names[i]}": v for name, v in slice_maps.items()})
        written.append(
            draw_overlays(
                images[i],
                slice_maps,
                None,
                f"{prediction.record['patient_id']} {prediction.used[i].name}: predicted "
                f"{predicted} (p={probability:.2f})",
                folder / f"{names[i]}_explain.png",
            )
        )
    bars = importance["attention"] if model.bag_model is not None else None
    drops = importance["drops"] if model.bag_model is not None else importance["slice_probability"]
    written.append(
        draw_slice_importance(
            names,
            bars,
            drops,
            [None] * len(names),
            f"{prediction.record['patient_id']}: predicted {predicted} (p={probability:.2f})",
            folder / "slice_importance.png",
        )
    )
    np.savez_compressed(folder / "maps.npz", **saved)
    return written


def build_explainer(loaded: LoadedModel, temperature: float):
    """The loaded model as :mod:`mritumor.explain` wants it (no second load of the weights),
    with predict's settings: default window, both methods where Grad-CAM applies, 3 slices."""
    from mritumor.explain.explainable import Settings, default_window, explainable_model

    model = explainable_model(loaded, temperature)
    window = default_window(loaded.preprocessing.image_size)
    methods = ["occlusion"] + (["gradcam"] if model.gradcam_layer is not None else [])
    return model, Settings(methods, window, max(1, window // 2), "mean", 3, 0)
