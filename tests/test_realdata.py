"""The real datasets in ../shared/data: exact counts, labels as the originals state them.
Skipped, with the reason, when ../shared/data is absent."""

from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import shared_data
from mritumor.data.loading.cache import Preprocessing, SliceCache
from mritumor.data.loading.splits import make_folds, make_split
from mritumor.data.reading.readers import read_catalog


def test_figshare_counts_and_families():
    catalog = read_catalog(shared_data("figshare"))
    table = catalog.table
    assert catalog.source == "manifest" and not catalog.problems
    assert len(table) == 2445 and table["patient_id"].nunique() == 187
    assert table["tumor_type"].value_counts().to_dict() == {
        "glioma": 1167,
        "pituitary": 724,
        "meningioma": 554,
    }
    assert not catalog.has_grades and catalog.has_masks
    assert table["patient_family"].nunique() == 168
    codes = {1: "meningioma", 2: "glioma", 3: "pituitary"}
    assert (table["label_code"].map(codes) == table["tumor_type"]).all()
    split = make_split(table, seed=0)
    assert split.group_by == "patient_family"
    family = table.drop_duplicates("patient_id").set_index("patient_id")["patient_family"]
    parts = [set(family[split.train]), set(family[split.val]), set(family[split.test])]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_lgg_counts_and_grades_match_data_csv():
    root = shared_data("lgg")
    catalog = read_catalog(root)
    table = catalog.table
    assert len(table) == 2961 and table["patient_id"].nunique() == 86 and not catalog.problems
    original = pd.read_csv(root / "data.csv").set_index("Patient")
    per_patient = table.groupby("patient_id").agg(
        grade=("grade", "first"), tumor_type=("tumor_type", "first")
    )
    expected_grade = original.loc[per_patient.index, "neoplasm_histologic_grade"].map(
        {1: "2", 2: "3"}
    )
    assert (per_patient["grade"] == expected_grade).all()
    types = {1: "astrocytoma", 2: "oligoastrocytoma", 3: "oligodendroglioma"}
    assert (
        per_patient["tumor_type"] == original.loc[per_patient.index, "histological_type"].map(types)
    ).all()
    assert set(per_patient["grade"]) == {"2", "3"}
    # slices are in stack order within each patient
    for _, rows in table.groupby("patient_id", sort=False):
        assert rows["slice_index"].is_monotonic_increasing
    folds = make_folds(table, k=5, seed=0)
    assert sorted(p for f in folds for p in f.test) == sorted(table["patient_id"].unique())


def test_lgg_slices_decode_as_three_channels_with_binary_masks():
    catalog = read_catalog(shared_data("lgg"))
    few = catalog.subset(catalog.patients[:2])
    cache = SliceCache.build(few, Preprocessing(image_size=64, channels=3), progress=False)
    assert len(cache) == len(few) and cache.images.shape[1:] == (3, 64, 64)
    has_tumor = few.table["has_tumor"].to_numpy().astype(bool)
    mask_area = np.asarray(cache.masks).reshape(len(cache), -1).sum(1)
    assert ((mask_area > 0) == has_tumor).mean() > 0.95  # resized masks keep tumour presence


def test_the_loso_sources_file_reads_three_sources_with_their_options():
    """benchmarks/sources/loso.yaml on the real folders: LGG's tumour slices renamed to glioma
    without masks, external_dev's T1C+ gliomas/meningiomas, figshare unchanged; families kept."""
    from pathlib import Path

    from mritumor.data.loading.prepare import read_data
    from mritumor.data.loading.splits import leave_one_source_out

    for name in ("figshare", "lgg", "external_dev"):
        shared_data(name)
    sources = Path(__file__).resolve().parents[1] / "benchmarks" / "sources" / "loso.yaml"
    table = read_data(None, sources=str(sources)).table
    counts = table.groupby(["source", "tumor_type"]).size().to_dict()
    assert counts == {
        ("external_dev", "glioma"): 419,
        ("external_dev", "meningioma"): 149,
        ("figshare", "glioma"): 1167,
        ("figshare", "meningioma"): 554,
        ("figshare", "pituitary"): 724,
        ("lgg", "glioma"): 1067,  # the manifest's has_tumor == 1 slices
    }
    masks = table.groupby("source")["mask"].apply(lambda s: int(s.notna().sum())).to_dict()
    assert masks == {"external_dev": 0, "figshare": 2445, "lgg": 0}
    assert (table.loc[table["source"] == "lgg", "channel"] == 2).all()
    assert table.loc[table["source"] == "figshare", "patient_family"].nunique() == 168
    folds = leave_one_source_out(table, seed=0)
    for fold in folds:
        held_out = fold.extra["held_out_source"]
        assert len(fold.test) == table.loc[table["source"] == held_out, "patient_id"].nunique()
