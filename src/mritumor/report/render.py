"""The sections of the report: one per run folder, nested like the folders; each sub-section
comes from its own module."""

from __future__ import annotations

from collections.abc import Mapping

from mritumor import runfiles
from mritumor.report.calibration import calibration_part
from mritumor.report.classification import confusion_tables, per_class_part
from mritumor.report.comparison import compare_runs_part
from mritumor.report.figures import (
    CALIBRATION,
    CONFUSION,
    CURVES,
    OVERLAYS,
    UNCERTAINTY,
    figures,
    gallery,
)
from mritumor.report.files import files_part, predictions_part
from mritumor.report.folder import Folder, describe, written
from mritumor.report.html import esc
from mritumor.report.metrics import metrics_part
from mritumor.report.page import Page, TocEntry, note, subsection
from mritumor.report.scan import RunFolder
from mritumor.report.segmentation import segmentation_part
from mritumor.report.summary import summary_part
from mritumor.report.training import config_part, split_part, training_curves
from mritumor.report.uncertainty import uncertainty_part


def render_folder(page: Page, node: RunFolder, number: str, depth: int, title: str) -> str:
    folder = Folder(node)
    children = [Folder(c) for c in node.children]
    kind = describe(folder)
    anchor = "run-" + number.replace(".", "-")
    page.toc.append(TocEntry(number, title, kind, anchor, depth))
    level = min(depth + 2, 6)
    sub = level + 1
    report = folder.json(runfiles.TEST_REPORT)
    report = report if isinstance(report, Mapping) else None
    metrics = folder.json(runfiles.TEST_METRICS)
    metrics = metrics if isinstance(metrics, Mapping) else None

    meta = [f"<span>{esc(kind)}</span>", f"<code>{esc(node.path)}</code>"]
    when = written(folder)
    if when:
        meta.append(f"files written {esc(when)}")
    body = [
        f'<section class="run depth-{depth}" id="{anchor}">',
        f"<h{level}>{esc(number)} {esc(title)}</h{level}>",
        f'<p class="meta">{" · ".join(meta)}</p>',
    ]
    summary = summary_part(folder)
    compare_runs = compare_runs_part(folder)
    body.append(summary + compare_runs)
    body.append(subsection(sub, "Metrics", metrics_part(folder, children, sub + 1)))
    if report:
        body.append(subsection(sub, "Per class", per_class_part(report)))
    body.append(subsection(sub, "Curves", figures(page, folder, CURVES)))
    confusion = (confusion_tables(report) if report else "") + figures(page, folder, CONFUSION)
    body.append(subsection(sub, "Confusion matrices", confusion))
    calibration = calibration_part(folder, report, metrics) + figures(page, folder, CALIBRATION)
    body.append(subsection(sub, "Calibration", calibration))
    answer = uncertainty_part(folder) + figures(page, folder, UNCERTAINTY)
    body.append(subsection(sub, "Knowing when not to answer", answer))
    segmentation = segmentation_part(report) + figures(page, folder, OVERLAYS, wide=True)
    body.append(subsection(sub, "Segmentation examples", segmentation))
    body.append(subsection(sub, "Training curves", training_curves(node.path)))
    other, n_other = gallery(page, folder)
    explain = folder.has("attribution_summary.json")
    body.append(subsection(sub, "Figures" if explain else "Other figures", other))
    if folder.has(runfiles.PREDICTIONS):
        body.append(
            subsection(sub, "Predictions", predictions_part(folder, page.options.preview_rows))
        )
    body.append(subsection(sub, "Split", split_part(folder)))
    body.append(subsection(sub, "Configuration", config_part(folder)))
    body.append(subsection(sub, "Files", files_part(folder)))
    body.extend(note(n) for n in folder.notes)
    for index, child in enumerate(node.children, start=1):
        child_title = str(child.path.relative_to(node.path))
        body.append(render_folder(page, child, f"{number}.{index}", depth + 1, child_title))
    body.append("</section>")
    return "".join(part for part in body if part)
