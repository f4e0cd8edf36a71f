"""Readers: one module per data source, each returning a :class:`Catalog`.

Readers only look at structure (which files, which labels, header-level sizes); pixels are
decoded once, later, by the preprocessing cache, which skips and counts undecodable slices.
A problem with one file or patient never stops the others from loading: it is recorded as a
:class:`Problem`, summarised, and fatal only under ``strict``.

Sources: :mod:`.folder` (``ROOT/<type>[-g<grade>]/<patient>/<slices>``, with patient folders
of 2-D files, NIfTI volumes or :mod:`.dicom` series), :mod:`.image_folders`
(``ROOT/[split/]<class>/<images>``, one image per group), :mod:`.figshare` (MATLAB v7.3 slices and
``cvind.mat``), :mod:`.lgg` (TCGA-LGG ``kaggle_3m``) and :mod:`.manifest` (a CSV). A new source
is a module here, an entry in ``FORMATS`` and ``_READERS``, and a rule in :func:`detect_format`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mritumor.data.reading.catalog import (
    Catalog,
    check_not_empty,
    drop_conflicting_patients,
    raise_if_strict,
    summarise_problems,
)
from mritumor.data.reading.readers.common import MASK_NAME, walk_files
from mritumor.data.reading.readers.dicom import DicomSeries, dicom_rows, read_series, slice_position
from mritumor.data.reading.readers.figshare import FIGSHARE_LABELS, read_figshare_mat
from mritumor.data.reading.readers.folder import (
    CLASS_FOLDER,
    dicom_files,
    patient_rows,
    patient_series,
    read_folder_tree,
)
from mritumor.data.reading.readers.image_folders import (
    LEAKAGE_WARNING,
    looks_like_image_folders,
    read_image_folders,
)
from mritumor.data.reading.readers.lgg import LGG_GRADES, LGG_TYPES, find_lgg_cases, read_lgg_kaggle
from mritumor.data.reading.readers.manifest import read_manifest
from mritumor.errors import DataError

__all__ = [
    "CLASS_FOLDER",
    "DicomSeries",
    "FIGSHARE_LABELS",
    "FORMATS",
    "LEAKAGE_WARNING",
    "LGG_GRADES",
    "LGG_TYPES",
    "MASK_NAME",
    "detect_format",
    "dicom_files",
    "dicom_rows",
    "patient_rows",
    "patient_series",
    "read_catalog",
    "read_figshare_mat",
    "read_folder_tree",
    "read_image_folders",
    "read_lgg_kaggle",
    "read_manifest",
    "read_series",
    "slice_position",
]

log = logging.getLogger(__name__)

FORMATS = ("folder", "image_folders", "figshare_mat", "lgg_kaggle", "manifest")
_READERS = {
    "folder": read_folder_tree,
    "image_folders": read_image_folders,
    "figshare_mat": read_figshare_mat,
    "lgg_kaggle": read_lgg_kaggle,
    "manifest": read_manifest,
}

# kept until predict.py moves to the public names
_patient_rows = patient_rows
_dicom_rows = dicom_rows


def read_catalog(data_root: str | Path, format: str | None = None, strict: bool = False) -> Catalog:
    """Read any supported source into a Catalog; ``format`` overrides auto-detection."""
    root = Path(data_root).absolute()
    if not root.exists():
        raise DataError(f"--data_root {root} does not exist")
    format = format or detect_format(root)
    if format not in _READERS:
        raise DataError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    catalog = _READERS[format](root)
    table, conflicts = drop_conflicting_patients(catalog.table)
    catalog = Catalog(table, catalog.source, catalog.root, catalog.problems + conflicts)
    if catalog.problems:
        log.warning(
            "%d item(s) skipped while reading %s: %s",
            len(catalog.problems),
            root,
            summarise_problems(catalog.problems),
        )
        for problem in catalog.problems[:10]:
            log.warning("  %s", problem)
    raise_if_strict(catalog.problems, strict)
    check_not_empty(catalog)
    return catalog


def detect_format(root: Path) -> str:
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "manifest"
        raise DataError(
            f"--data_root {root} is a file; only a manifest .csv can be given as a file"
        )
    if (root / "manifest.csv").is_file():
        return "manifest"
    if find_lgg_cases(root):
        return "lgg_kaggle"
    if any(p.name.lower() != "cvind.mat" for p in walk_files(root, max_depth=2, suffix=".mat")):
        return "figshare_mat"
    if looks_like_image_folders(root):
        return "image_folders"
    return "folder"
