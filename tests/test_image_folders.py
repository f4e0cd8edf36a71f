"""Image-level class folders (``ROOT/[split/]<class>/<images>``): labels, groups, the warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import blob_slice, write_png
from mritumor.cli import main
from mritumor.data.loading.splits import make_split
from mritumor.data.reading.readers import LEAKAGE_WARNING, detect_format, read_catalog
from mritumor.data.reading.readers.image_folders import normalise_class


@pytest.mark.parametrize(
    "name, expected",
    [
        ("glioma_tumor", "glioma"),
        ("Glioma", "glioma"),
        ("meningioma_tumor", "meningioma"),
        ("pituitary_tumour", "pituitary"),
        ("no_tumor", "no_tumour"),
        ("notumor", "no_tumour"),
        ("No Tumour", "no_tumour"),
    ],
)
def test_class_names_are_normalised(name, expected):
    assert normalise_class(name) == expected


@pytest.fixture
def kaggle_style(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "brain"
    counts = {"glioma_tumor": 3, "meningioma_tumor": 2, "no_tumor": 2, "pituitary_tumor": 1}
    for split in ("Training", "Testing"):
        for folder, n in counts.items():
            for k in range(n):
                image, _ = blob_slice(rng, bright=folder != "no_tumor")
                write_png(root / split / folder / f"img_{k}.jpg", image)
    (root / "Training" / "glioma_tumor" / "notes.txt").write_text("not an image")
    return root, counts


def test_reads_labels_groups_and_warns(kaggle_style, caplog):
    root, counts = kaggle_style
    assert detect_format(root) == "image_folders"
    with caplog.at_level(logging.WARNING):
        catalog = read_catalog(root)
    assert LEAKAGE_WARNING in caplog.text
    table = catalog.table
    expected = {
        "glioma": 2 * counts["glioma_tumor"],
        "meningioma": 2 * counts["meningioma_tumor"],
        "no_tumour": 2 * counts["no_tumor"],
        "pituitary": 2 * counts["pituitary_tumor"],
    }
    assert table["tumor_type"].value_counts().to_dict() == expected
    assert table["patient_id"].is_unique  # each image its own group
    assert set(table["source_split"]) == {"Training", "Testing"}
    assert "Training/glioma_tumor/img_0" in set(table["patient_id"])
    assert [p.reason for p in catalog.problems] == ["not an image file; skipped"]
    split = make_split(table, val_frac=0.25, test_frac=0.25, seed=0)
    assert len(split.train) + len(split.val) + len(split.test) == len(table)


def test_data_inspect_prints_the_leakage_warning(kaggle_style, capsys):
    root, _ = kaggle_style
    assert main(["data", "inspect", "--data_root", str(root)]) == 0
    assert f"WARNING: {LEAKAGE_WARNING}" in capsys.readouterr().out


def test_patient_folders_stay_a_folder_tree(folder_tree):
    assert detect_format(folder_tree) == "folder"
