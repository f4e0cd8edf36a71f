"""Any readable source → a normalised folder tree that people can look at and share.

``OUT/<type>[-g<grade>]/<patient>/slice_NNNN.<png|npy>`` with ``slice_NNNN_mask.<ext>`` beside
each slice that has a mask, ``OUT/manifest.csv`` (one row per slice: the tree's paths, the
labels, where each slice came from, and the source's extra columns such as Figshare's ``fold``)
and ``OUT/conversion.json`` (the settings). Both the folder-tree reader and the manifest
reader read the result back (the manifest is what auto-detection picks, as it keeps the
extra columns).

Normalisation: each channel is windowed to its 0.5th–99.5th percentiles and scaled to [0, 1],
the same window the training cache applies, so a copy trains like its source. PNG stores
``round(255·v)`` (8 bits, grayscale or RGB); NPY stores ``v`` as float32. ``image_size``
pads each slice to a centred square and resizes it (bilinear images, nearest masks), as the
cache does. Masks are 0/255 PNG or 0/1 uint8 NPY.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mritumor import __version__
from mritumor.data.reading import io
from mritumor.data.reading.catalog import REQUIRED_COLUMNS, Catalog, Problem
from mritumor.data.reading.readers.folder import CLASS_FOLDER
from mritumor.errors import DataError
from mritumor.resources import check_free_space, check_writable

OUTPUT_FORMATS = ("png", "npy")
CLIP_PERCENTILES = (0.5, 99.5)  # mritumor.data.loading.cache.Preprocessing's defaults
# columns of the written manifest that a source's extra column of the same name would clash with
_OWN_COLUMNS = {"slice_index", "original_image", "original_frame", "original_source"}


@dataclass
class Converted:
    out: Path
    slices: int = 0
    patients: int = 0
    masks: int = 0
    problems: list[Problem] = field(default_factory=list)


def window(image: np.ndarray) -> np.ndarray:
    """(C, H, W) → float32 in [0, 1], each channel windowed to its percentiles."""
    flat = image.reshape(image.shape[0], -1)
    low, high = np.percentile(flat, CLIP_PERCENTILES, axis=1).astype(np.float32)
    scale = np.maximum(high - low, 1e-6)  # a constant channel maps to 0
    return np.clip((image - low[:, None, None]) / scale[:, None, None], 0, 1).astype(np.float32)


def class_folder(tumor_type: str, grade: str | None) -> str:
    """``<type>[-g<grade>]``, refused when the folder-tree reader would read other labels."""
    name = f"{tumor_type}-g{grade}" if grade is not None else str(tumor_type)
    match = CLASS_FOLDER.match(name)
    if not match or match["type"].strip() != tumor_type or match["grade"] != grade:
        raise DataError(
            f"tumour type {tumor_type!r} with grade {grade!r} cannot be written as a class folder "
            "<type>[-g<number>] that reads back the same; rename it in a manifest first"
        )
    return name


def patient_folder(patient: str) -> str:
    """The patient id as a folder name: characters other than letters, digits, '.', '-' and
    '_' become '_' (the manifest keeps the true id)."""
    name = re.sub(r"[^\w.\-]", "_", patient).lstrip(".") or "_"
    return name


def convert_catalog(
    catalog: Catalog,
    out: str | Path,
    format: str = "png",
    image_size: int | None = None,
    progress: bool = True,
) -> Converted:
    """Write ``catalog`` as the normalised folder tree in ``out`` (new or empty)."""
    if format not in OUTPUT_FORMATS:
        raise DataError(f"unknown output format {format!r}; choose png or npy")
    if image_size is not None and not 16 <= image_size <= 2048:
        raise DataError(f"--image_size {image_size} outside 16..2048")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out} exists and is not an empty folder; choose a new folder")
    check_writable(out, "output folder")
    table = catalog.table
    folders = _plan_folders(table)
    result = Converted(out, patients=len(folders))
    rows = []
    position_in_patient: dict[str, int] = {}
    checked_space = False
    for row in tqdm(
        table.to_dict("records"), desc="converting", unit="slice", disable=not progress
    ):
        patient = row["patient_id"]
        try:
            image = window(io.read_image(row["image"], row["frame"]))
        except io.SliceReadError as error:
            result.problems.append(Problem(_where(row), str(error)))
            continue
        if format == "png" and image.shape[0] not in (1, 3):
            result.problems.append(
                Problem(
                    _where(row),
                    f"{image.shape[0]} channels cannot be stored as PNG; use --format npy",
                )
            )
            continue
        mask = None
        if row["mask"] is not None:
            try:
                mask = io.read_mask(row["mask"], row["frame"])
            except io.SliceReadError as error:
                result.problems.append(
                    Problem(f"{row['mask']}", f"{error}; slice kept without mask")
                )
        if image_size is not None:
            image, mask = _resize(image, mask, image_size)
        if not checked_space:  # the first slice tells how large the copy will be
            per_slice = image.size * (1 if format == "png" else 4) * 2
            check_free_space(out, per_slice * len(table), "the converted copy")
            checked_space = True
        index = position_in_patient.get(patient, 0)
        position_in_patient[patient] = index + 1
        relative = Path(folders[patient]) / f"slice_{index:04d}.{format}"
        _write_image(out / relative, image, format)
        mask_relative = None
        if mask is not None:
            mask_relative = relative.with_name(f"slice_{index:04d}_mask.{format}")
            _write_mask(out / mask_relative, mask, format)
            result.masks += 1
        rows.append(_manifest_row(row, catalog, relative, mask_relative, index))
        result.slices += 1
    if not rows:
        raise DataError(f"no slice of {catalog.root} could be decoded; nothing written")
    pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)
    settings = {
        "mritumor_version": __version__,
        "source_format": catalog.source,
        "format": format,
        "image_size": image_size,
        "window_percentiles": list(CLIP_PERCENTILES),
        "png_scale": 255 if format == "png" else None,
        "slices": result.slices,
        "patients": len(position_in_patient),
        "masks": result.masks,
        "skipped": [str(p) for p in result.problems],
    }
    (out / "conversion.json").write_text(json.dumps(settings, indent=2) + "\n")
    result.patients = len(position_in_patient)
    return result


def _plan_folders(table: pd.DataFrame) -> dict[str, str]:
    """patient → ``<class>/<patient>``; two ids that map to one folder are refused."""
    folders: dict[str, str] = {}
    taken: dict[str, str] = {}
    for patient, tumor_type, grade in (
        table[["patient_id", "tumor_type", "grade"]].drop_duplicates("patient_id").itertuples(False)
    ):
        folder = f"{class_folder(tumor_type, grade)}/{patient_folder(patient)}"
        if folder.lower() in taken:  # also on case-insensitive file systems
            raise DataError(
                f"patients {taken[folder.lower()]!r} and {patient!r} would share the folder "
                f"{folder}; rename one in a manifest first"
            )
        taken[folder.lower()] = patient
        folders[patient] = folder
    return folders


def _resize(image: np.ndarray, mask: np.ndarray | None, size: int):
    import torch

    from mritumor.data.loading.cache import resize_square

    image = resize_square(torch.from_numpy(image), size, "bilinear").clamp_(0, 1).numpy()
    if mask is not None:
        tensor = torch.from_numpy(mask.astype(np.float32))[None]
        mask = resize_square(tensor, size, "nearest")[0].numpy() > 0.5
    return image, mask


def _write_image(path: Path, image: np.ndarray, format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    if format == "npy":
        np.save(path, np.ascontiguousarray(pixels, dtype=np.float32))
        return
    from PIL import Image

    Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(path)


def _write_mask(path: Path, mask: np.ndarray, format: str) -> None:
    if format == "npy":
        np.save(path, mask.astype(np.uint8))
        return
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _manifest_row(row: dict, catalog: Catalog, image: Path, mask: Path | None, index: int) -> dict:
    record = {
        "image": image.as_posix(),
        "mask": mask.as_posix() if mask is not None else None,
        "patient_id": row["patient_id"],
        "tumor_type": row["tumor_type"],
        "grade": row["grade"],
        "slice_index": index,
        "original_image": _relative(row["image"], catalog.root),
        "original_frame": row["frame"],
        "original_source": row["source"],
    }
    for column, value in row.items():
        if column not in REQUIRED_COLUMNS:
            record[f"original_{column}" if column in _OWN_COLUMNS else column] = value
    return record


def _relative(path: str, root: Path) -> str:
    """Paths relative to the data root: a shared copy does not carry the local folders."""
    try:
        return Path(path).absolute().relative_to(Path(root).absolute()).as_posix()
    except ValueError:
        return Path(path).name


def _where(row: dict) -> str:
    return row["image"] if row["frame"] < 0 else f"{row['image']}[{row['frame']}]"
