"""``mritumor data inspect``: what a dataset holds and everything wrong with it."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from mritumor.data.reading import io
from mritumor.data.reading.catalog import Catalog, Problem, safe_text


def inspect_catalog(catalog: Catalog, progress: bool = True) -> dict:
    """Decode every slice once and summarise; problems of reading and decoding are listed."""
    table = catalog.table

    def examine(position: int) -> dict:
        image, frame, mask = (
            table.at[position, "image"],
            table.at[position, "frame"],
            table.at[position, "mask"],
        )
        result: dict = {"position": position}
        try:
            pixels = io.read_image(image, frame)
            result["shape"] = f"{pixels.shape[1]}x{pixels.shape[2]}"
            result["channels"] = int(pixels.shape[0])
            result["constant"] = bool(pixels.min() == pixels.max())
            if mask is not None:
                mask_pixels = io.read_mask(mask, frame)
                if mask_pixels.shape != pixels.shape[1:]:
                    raise io.SliceReadError(
                        f"mask {mask_pixels.shape} and image {pixels.shape[1:]} differ in size"
                    )
                result["coverage"] = float(mask_pixels.mean())
        except io.SliceReadError as error:
            where = f"{image}[{frame}]" if frame >= 0 else str(image)
            result["problem"] = Problem(where, str(error))
        return result

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(
            tqdm(
                pool.map(examine, range(len(table))),
                total=len(table),
                desc="Inspecting",
                unit="slice",
                disable=not progress,
            )
        )
    problems = list(catalog.problems) + [r["problem"] for r in results if "problem" in r]
    coverage = np.array([r["coverage"] for r in results if "coverage" in r])
    per_patient = table.groupby("patient_id").size()
    counts = catalog.counts()
    return {
        "data_root": str(catalog.root),
        "format": catalog.source,
        "slices": int(len(table)),
        "patients": int(table["patient_id"].nunique()),
        "groups": {
            column: int(table[column].nunique())
            for column in ("patient_family",)
            if column in table.columns
        },
        "classes": counts.to_dict("records"),
        "slices_per_patient": _describe(per_patient.to_numpy()),
        "image_sizes": dict(Counter(r["shape"] for r in results if "shape" in r).most_common()),
        "channels": {
            str(k): v for k, v in Counter(r["channels"] for r in results if "channels" in r).items()
        },
        "constant_images": int(sum(r.get("constant", False) for r in results)),
        "masks": {
            "slices_with_mask": int(len(coverage)),
            "slices_with_tumour": int((coverage > 0).sum()),
            "coverage_of_tumour_slices": _describe(coverage[coverage > 0]),
        },
        "has_grades": catalog.has_grades,
        "predefined_folds": sorted(int(f) for f in table["fold"].unique())
        if "fold" in table.columns
        else None,
        "problems": [{"path": p.path, "reason": p.reason} for p in problems],
        "warnings": sorted(set(table["leakage_warning"].dropna()))
        if "leakage_warning" in table.columns
        else [],
    }


def _describe(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"n": 0}
    return {
        "n": int(len(values)),
        "min": float(values.min()),
        "median": float(np.median(values)),
        "mean": float(values.mean()),
        "max": float(values.max()),
    }


def format_report(report: dict) -> str:
    """The human-readable table printed by ``mritumor data inspect``."""
    lines = [
        f"Data root : {report['data_root']}",
        f"Format    : {report['format']}",
        f"Slices    : {report['slices']}    Patients: {report['patients']}"
        + "".join(f"    {k}: {v}" for k, v in report["groups"].items()),
        "",
        f"{'tumour type':<22}{'grade':>6}{'patients':>10}{'slices':>9}",
    ]
    for row in report["classes"]:
        lines.append(
            f"{row['tumor_type']:<22}{row['grade']:>6}{row['patients']:>10}{row['slices']:>9}"
        )
    spp = report["slices_per_patient"]
    lines += [
        "",
        f"Slices per patient: min {spp['min']:.0f}, median {spp['median']:.0f}, max {spp['max']:.0f}",
        "Image sizes: " + ", ".join(f"{k} ({v})" for k, v in report["image_sizes"].items()),
        "Channels: " + ", ".join(f"{k} ({v})" for k, v in report["channels"].items()),
    ]
    masks = report["masks"]
    if masks["slices_with_mask"]:
        cov = masks["coverage_of_tumour_slices"]
        detail = f", median tumour coverage {cov['median']:.2%}" if cov["n"] else ""
        lines.append(
            f"Masks: {masks['slices_with_mask']} slices, {masks['slices_with_tumour']} with tumour{detail}"
        )
    else:
        lines.append("Masks: none")
    if report["constant_images"]:
        lines.append(f"Constant (blank) images: {report['constant_images']}")
    if report["predefined_folds"]:
        lines.append(f"Predefined folds: {report['predefined_folds']}")
    if not report["has_grades"]:
        lines.append("Grades: none (grade metrics will be skipped)")
    for warning in report.get("warnings", []):
        lines += ["", f"WARNING: {warning}"]
    problems = report["problems"]
    lines += ["", f"Problems: {len(problems)}"]
    lines += [f"  {safe_text(p['path'])}: {p['reason']}" for p in problems]
    return "\n".join(lines)
