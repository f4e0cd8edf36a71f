"""Overlay PNGs: the slice in gray, an attribution map on top, the tumour mask's outline.

Drawn on bare ``matplotlib.figure.Figure`` objects (Agg), as in :mod:`mritumor.evaluation.curves`:
no pyplot state, safe on headless servers.

* occlusion maps are signed (probability drops): a diverging colour map centred on 0, red where
  hiding the region lowered the predicted class's probability, blue where it raised it;
* Grad-CAM maps are non-negative: a sequential colour map from 0 to the map's maximum;
* the mask outline is drawn in green, the map's maximum (the pointing-game location) as a cross.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

MAP_STYLE = {
    "occlusion": {"cmap": "RdBu_r", "signed": True, "label": "occlusion: drop of p"},
    "gradcam": {"cmap": "jet", "signed": False, "label": "Grad-CAM"},
}


def gray(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) → (H, W) float: the mean over channels."""
    array = np.asarray(image, dtype=np.float32)
    return array.mean(axis=0) if array.ndim == 3 else array


def _limits(values: np.ndarray, signed: bool) -> tuple[float, float]:
    extent = float(np.abs(values).max()) if values.size else 0.0
    extent = max(extent, 1e-8)
    return (-extent, extent) if signed else (0.0, extent)


def draw_overlays(
    image: torch.Tensor,
    maps: dict[str, np.ndarray],
    mask: np.ndarray | None,
    title: str,
    path: str | Path,
    alpha: float = 0.5,
) -> Path:
    """One panel for the slice (with the mask outline) and one per map in ``maps``."""
    background = gray(image)
    panels = 1 + len(maps)
    figure = Figure(figsize=(3.2 * panels, 3.6), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    axes[0].imshow(background, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("slice", fontsize=9)
    for axis, (name, values) in zip(axes[1:], maps.items(), strict=True):
        style = MAP_STYLE.get(name, {"cmap": "magma", "signed": False, "label": name})
        values = np.asarray(values, dtype=np.float32)
        low, high = _limits(values, style["signed"])
        axis.imshow(background, cmap="gray", vmin=0, vmax=1)
        shown = axis.imshow(values, cmap=style["cmap"], vmin=low, vmax=high, alpha=alpha)
        row, column = np.unravel_index(int(np.argmax(values)), values.shape)
        axis.plot([column], [row], marker="x", color="white", markersize=7, mew=2)
        axis.set_title(style["label"], fontsize=9)
        figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
    for axis in axes:
        if mask is not None and np.asarray(mask).any():
            axis.contour(np.asarray(mask).squeeze() > 0, levels=[0.5], colors="lime", linewidths=1)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def draw_slice_importance(
    slice_labels: list[str],
    attention: np.ndarray | None,
    scores: np.ndarray,
    has_tumour: list[bool | None],
    title: str,
    path: str | Path,
    score_label: str = "drop of p when slice removed",
) -> Path:
    """Bars per slice: the model's attention weight (top panel, when the model has one) and
    ``scores`` (bottom: the slice-occlusion drop, or a slice model's own probability; their
    scales differ, so they get separate axes). Slices whose mask shows tumour are marked with *."""
    positions = np.arange(len(slice_labels))
    panels = [(score_label, np.nan_to_num(np.asarray(scores, dtype=float)), "tab:orange")]
    if attention is not None:
        panels.insert(0, ("attention weight", np.asarray(attention), "tab:blue"))
    figure = Figure(
        figsize=(max(5.0, 0.45 * len(slice_labels) + 2), 1.9 * len(panels) + 0.8),
        layout="constrained",
    )
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axis, (label, values, colour) in zip(axes, panels, strict=True):
        axis.bar(positions, values, 0.6, color=colour)
        axis.axhline(0, color="black", linewidth=0.6)
        axis.set_ylabel(label, fontsize=8)
    names = [f"{n}*" if tumour else n for n, tumour in zip(slice_labels, has_tumour, strict=True)]
    axes[-1].set_xticks(positions, names, fontsize=8)
    axes[-1].set_xlabel("slice (* = tumour in mask)", fontsize=8)
    figure.suptitle(title, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
