"""Figures: the known ones in their sub-sections, and the gallery of the rest."""

from __future__ import annotations

import os
from pathlib import Path

from mritumor import runfiles
from mritumor.report.folder import Folder
from mritumor.report.html import IMAGE_TYPES
from mritumor.report.page import Page, note
from mritumor.report.scan import SKIP_DIRS, natural_key

CURVES = [
    ("roc_tumor_type_ovr.png", "Tumour type: one-vs-rest ROC"),
    ("pr_tumor_type_ovr.png", "Tumour type: one-vs-rest precision–recall"),
    ("roc_grade_e2e_ovr.png", "End-to-end grade: one-vs-rest ROC"),
    ("pr_grade_e2e_ovr.png", "End-to-end grade: one-vs-rest precision–recall"),
    ("roc_overlay.png", "ROC curves of the compared runs"),
    ("dice_per_patient_boxplot.png", "Per-patient Dice of the compared runs"),
    ("ssl_embedding_pca.png", "Frozen embeddings, 2-D PCA (○ train, × test)"),
]


CONFUSION = [
    ("confusion_tumor_type.png", "Confusion matrix, tumour type (rows: true)"),
    ("confusion_grade_e2e.png", "Confusion matrix, end-to-end grade (rows: true)"),
]


CALIBRATION = [("reliability_tumor_type.png", "Reliability diagram, tumour type")]


OVERLAYS = [(runfiles.OVERLAYS, "Test slices: reference mask green, prediction red")]


UNCERTAINTY = [
    (runfiles.RISK_COVERAGE, "Risk–coverage: error rate when answering the most confident")
]


KNOWN_FIGURES = {
    name for group in (CURVES, CONFUSION, CALIBRATION, OVERLAYS, UNCERTAINTY) for name, _ in group
}


NOT_FIGURE_DIRS = SKIP_DIRS | {"data"}


def figures(page: Page, folder: Folder, known: list[tuple[str, str]], wide: bool = False) -> str:
    html = [
        page.image(folder.path / name, caption, name, wide)
        for name, caption in known
        if folder.has(name)
    ]
    return f'<div class="figs">{"".join(html)}</div>' if html else ""


def gallery(page: Page, folder: Folder) -> tuple[str, int]:
    """Images of the folder the report has no place for, and those in its non-run sub-folders
    (e.g. explain's ``patients/<id>/``), at most ``max_gallery``."""
    runs_below = set()
    for child in folder.node.walk():
        if child is not folder.node:
            path = child.path
            while path != folder.path and path != path.parent:
                runs_below.add(path)
                path = path.parent
    images = [
        folder.path / name
        for name in folder.node.files
        if Path(name).suffix.lower() in IMAGE_TYPES and name not in KNOWN_FIGURES
    ]
    for base, dirs, files in os.walk(folder.path):
        base_path = Path(base)
        depth = len(base_path.relative_to(folder.path).parts)
        dirs[:] = sorted(
            (d for d in dirs if d not in NOT_FIGURE_DIRS and not d.startswith(".")
             and base_path / d not in runs_below and depth < 3),
            key=natural_key,
        )  # fmt: skip
        if not folder.node.is_run:  # a plain folder of runs: only its own images
            dirs[:] = []
        if base_path == folder.path:
            continue
        images += [
            base_path / f
            for f in sorted(files, key=natural_key)
            if Path(f).suffix.lower() in IMAGE_TYPES
        ]
    shown = images[: page.options.max_gallery]
    html = [page.image(p, str(p.relative_to(folder.path)), p.name) for p in shown]
    more = len(images) - len(shown)
    text = f'<div class="figs">{"".join(html)}</div>' if html else ""
    if more > 0:
        text += note(
            f"{more} more image(s) in this folder are not embedded "
            f"(at most {page.options.max_gallery} per run)"
        )
    return text, len(images)
