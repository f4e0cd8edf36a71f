"""The Figshare brain-tumour release: ``N.mat`` (MATLAB v7.3) slices and ``cvind.mat`` folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mritumor.data.reading import io
from mritumor.data.reading.catalog import Catalog, Problem, make_table, natural_key
from mritumor.data.reading.readers.common import walk_files
from mritumor.data.reading.sequences import T1_POST

FIGSHARE_LABELS = {1: "meningioma", 2: "glioma", 3: "pituitary"}


def read_figshare_mat(root: Path) -> Catalog:
    """The Figshare brain-tumour release: ``N.mat`` (MATLAB v7.3) files with group ``cjdata``
    (image, label 1/2/3, PID as uint16 characters, tumorMask), and optionally ``cvind.mat``."""
    import h5py

    rows, problems = [], []
    mat_files = [
        p
        for p in walk_files(root, max_depth=3, suffix=".mat", skipped=problems)
        if p.name.lower() != "cvind.mat"
    ]
    for path in sorted(mat_files, key=lambda p: natural_key(p.name)):
        try:
            with h5py.File(path, "r") as handle:
                rows.append(
                    {
                        **_figshare_header(handle, path),
                        "image": str(path),
                        "mask": str(path),
                        "sequence": T1_POST,  # the release: T1-weighted after contrast
                    }
                )
        except io.SliceReadError as error:
            problems.append(Problem(str(path), str(error)))
        except OSError as error:
            problems.append(Problem(str(path), f"not a MATLAB v7.3 (HDF5) file ({error})"))
        except Exception as error:  # h5py raises TypeError/KeyError/ValueError on odd layouts
            problems.append(
                Problem(
                    str(path),
                    f"not the Figshare 'cjdata' layout ({type(error).__name__}: {error})",
                )
            )
    table = make_table(rows)
    folds = _read_cvind(root, problems)
    if folds is not None and len(table):
        numbers = table["figshare_index"].astype(int)
        in_range = numbers.between(1, len(folds))
        if not in_range.all():
            problems.append(
                Problem(
                    str(root / "cvind.mat"),
                    "cvind.mat is shorter than the slice numbers; folds ignored",
                )
            )
        else:
            table["fold"] = folds[numbers - 1].astype(int)
    if len(table):
        table = table.sort_values(["patient_id", "figshare_index"], kind="stable").reset_index(
            drop=True
        )
    return Catalog(table, "figshare_mat", root, problems)


def _figshare_header(handle, path: Path) -> dict:
    import h5py

    group = handle.get("cjdata")
    if not isinstance(group, h5py.Group):
        raise io.SliceReadError("no 'cjdata' group (not a Figshare slice)")
    for key in ("image", "label", "PID"):
        if key not in group:
            raise io.SliceReadError(f"'cjdata/{key}' missing")
        if not isinstance(group[key], h5py.Dataset):
            raise io.SliceReadError(f"'cjdata/{key}' is a group, not an array")
    label_array = np.asarray(group["label"][()]).ravel()
    if label_array.size != 1 or label_array.dtype.kind not in "biuf":
        raise io.SliceReadError(
            f"'cjdata/label' must be one number, got {label_array.dtype} {label_array.shape}"
        )
    label = float(label_array[0])
    if label not in FIGSHARE_LABELS:
        raise io.SliceReadError(f"label code {label:g} is not 1/2/3 (meningioma/glioma/pituitary)")
    pid_codes = np.asarray(group["PID"][()]).ravel()
    if pid_codes.dtype.kind not in "iu" or pid_codes.size == 0:
        raise io.SliceReadError("'cjdata/PID' must be uint16 character codes")
    patient = "".join(chr(int(c)) for c in pid_codes if int(c) > 0).strip()
    if not patient:
        raise io.SliceReadError("empty patient id in 'cjdata/PID'")
    shape = group["image"].shape
    if len(shape) != 2:
        raise io.SliceReadError(f"'cjdata/image' must be 2-D, got shape {shape}")
    io.check_size(shape, path)
    number = int(path.stem) if path.stem.isdigit() else -1
    return {
        "frame": -1,
        "patient_id": patient,
        "tumor_type": FIGSHARE_LABELS[int(label)],
        "grade": None,
        "source": "figshare_mat",
        "figshare_index": number,
        "label_code": int(label),
    }


def _read_cvind(root: Path, problems: list[Problem]) -> np.ndarray | None:
    """Figshare's 5-fold patient-wise split: one fold number per slice N (1-based)."""
    candidates = list(walk_files(root, max_depth=3, suffix=".mat"))
    path = next((p for p in candidates if p.name.lower() == "cvind.mat"), None)
    if path is None:
        return None
    try:
        try:
            import h5py

            with h5py.File(path, "r") as handle:
                folds = np.asarray(handle["cvind"][()])
        except OSError:  # not HDF5: an older MATLAB format
            from scipy.io import loadmat

            folds = np.asarray(loadmat(path)["cvind"])
    except Exception as error:
        problems.append(
            Problem(str(path), f"unreadable cvind.mat, predefined folds ignored ({error})")
        )
        return None
    return folds.ravel()
