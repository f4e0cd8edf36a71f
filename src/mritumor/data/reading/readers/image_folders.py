"""Image-level class folders: ``ROOT/[split/]<class>/<images>`` with no patient level.

The layout of the most-used public brain-tumour sets (e.g. ``Training/glioma_tumor/*.jpg``,
``Testing/no_tumor/*.jpg``). Class names are normalised to the type vocabulary
(``glioma_tumor`` → ``glioma``, ``no_tumor``/``notumor`` → ``no_tumour``). Without patient ids
each image is its own group, so a split cannot keep one patient's slices on one side: every
read warns so, loudly, and the catalog's ``leakage_warning`` column says it for every row.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mritumor.data.reading import io
from mritumor.data.reading.catalog import Catalog, Problem, make_table, natural_key
from mritumor.data.reading.readers.common import file_stem, is_mask_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = io.RASTER_SUFFIXES | io.NUMPY_SUFFIXES
SPLIT_FOLDERS = {"training", "train", "testing", "test", "validation", "val", "valid"}
NO_TUMOUR = "no_tumour"
LEAKAGE_WARNING = (
    "image-level class folders have no patient ids: each image is its own group, so a split "
    "cannot rule out one patient's slices on both sides (train and test); metrics may be "
    "optimistic"
)


def normalise_class(name: str) -> str:
    """``Glioma_Tumor`` → ``glioma``; ``no_tumor``, ``notumor``, ``No Tumour`` → ``no_tumour``."""
    words = re.sub(r"[\s\-]+", "_", name.strip().lower())
    if re.fullmatch(r"no_?tumou?rs?|normal|healthy", words):
        return NO_TUMOUR
    words = re.sub(r"_?tumou?rs?$", "", words)
    return words or name


def class_folders(root: Path) -> list[tuple[str | None, Path]]:
    """(split name or None, class folder) pairs whose folder directly holds image files."""
    found: list[tuple[str | None, Path]] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if child.name.lower() in SPLIT_FOLDERS:
            found += [(child.name, d) for d in sorted(child.iterdir()) if _holds_images(d)]
        elif _holds_images(child):
            found.append((None, child))
    return found


def _holds_images(folder: Path) -> bool:
    return folder.is_dir() and any(
        f.is_file() and io.suffix_of(f).lower() in IMAGE_SUFFIXES and not is_mask_file(f)
        for f in folder.iterdir()
    )


def looks_like_image_folders(root: Path) -> bool:
    """True when every class folder holds images directly (no patient sub-folders)."""
    folders = class_folders(root)
    return bool(folders) and all(
        not any(p.is_dir() for p in folder.iterdir()) for _, folder in folders
    )


def read_image_folders(root: Path) -> Catalog:
    rows, problems = [], []
    for split, folder in class_folders(root):
        tumor_type = normalise_class(folder.name)
        prefix = f"{split}/" if split else ""
        files = sorted(folder.iterdir(), key=lambda p: natural_key(p.name))
        for path in files:
            if path.is_dir() or path.name.startswith("."):
                continue
            if io.suffix_of(path).lower() not in IMAGE_SUFFIXES:
                problems.append(Problem(str(path), "not an image file; skipped"))
                continue
            if is_mask_file(path):
                continue
            rows.append(
                {
                    "image": str(path),
                    "mask": None,
                    "patient_id": f"{prefix}{folder.name}/{file_stem(path)}",
                    "tumor_type": tumor_type,
                    "grade": None,
                    "source": "image_folders",
                    "source_split": split,
                    "class_folder": folder.name,
                    "leakage_warning": LEAKAGE_WARNING,
                }
            )
    if rows:
        log.warning("WARNING: %s (%s)", LEAKAGE_WARNING, root)
    return Catalog(make_table(rows), "image_folders", root, problems)
