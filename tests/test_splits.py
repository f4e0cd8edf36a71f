"""Patient-level splits: no leakage for any seed or grouping, stratification and its fallback."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mritumor.data.loading.splits import load_split, make_folds, make_split
from mritumor.errors import DataError


def synthetic_table(
    patients_per_class: dict[tuple[str, str | None], int], slices: int = 3, families: int = 1
):
    rows = []
    for (tumor_type, grade), count in patients_per_class.items():
        for p in range(count):
            patient = f"{tumor_type}-{grade}-{p}"
            for s in range(slices):
                rows.append(
                    {
                        "image": f"{patient}/{s}.png",
                        "patient_id": patient,
                        "tumor_type": tumor_type,
                        "grade": grade,
                        "patient_family": f"{tumor_type}-{grade}-{p // families}",
                    }
                )
    return pd.DataFrame(rows)


BALANCED = {("astro", "2"): 12, ("astro", "3"): 12, ("oligo", "2"): 12, ("oligo", "3"): 12}


def assert_disjoint(split, table, column="patient_id"):
    parts = [set(split.train), set(split.val), set(split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(table["patient_id"])
    group_of = table.drop_duplicates("patient_id").set_index("patient_id", drop=False)[column]
    groups = [set(group_of[list(p)]) for p in parts]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])


@pytest.mark.parametrize("seed", range(20))
def test_split_never_leaks_and_stratifies(seed):
    table = synthetic_table(BALANCED)
    split = make_split(table, 0.2, 0.2, seed=seed, group_by="patient_id")
    assert_disjoint(split, table)
    assert split.strategy == "stratified:type+grade"
    strata = table.drop_duplicates("patient_id").set_index("patient_id")
    test_strata = strata.loc[split.test].groupby(["tumor_type", "grade"]).size()
    assert (
        len(test_strata) == 4 and test_strata.max() - test_strata.min() <= 1
    )  # every class in test


@pytest.mark.parametrize("seed", range(10))
def test_families_are_kept_together(seed):
    table = synthetic_table(BALANCED, families=3)
    split = make_split(table, seed=seed)  # patient_family present → used by default
    assert split.group_by == "patient_family"
    assert_disjoint(split, table, "patient_family")


def test_fallback_to_type_then_unstratified_is_logged(caplog):
    caplog.set_level(logging.INFO)
    table = synthetic_table({("astro", "2"): 10, ("astro", "3"): 1, ("oligo", "2"): 10})
    split = make_split(table, 0.2, 0.2, seed=0, group_by="patient_id")
    assert split.strategy == "stratified:type"
    assert "used 'type'" in caplog.text
    table = synthetic_table({("astro", "2"): 12, ("oligo", None): 1})
    split = make_split(table, 0.2, 0.2, seed=0, group_by="patient_id")
    assert split.strategy == "unstratified"
    assert_disjoint(split, table)


@pytest.mark.parametrize("seed", range(10))
def test_kfold_partitions_groups_with_fallback(seed):
    # one class has fewer patients than folds: type+grade stratification is impossible
    table = synthetic_table({("astro", "2"): 10, ("astro", "3"): 3, ("oligo", "2"): 10}, families=2)
    folds = make_folds(table, k=5, val_frac=0.2, seed=seed)
    assert all(f.strategy == "5-fold:type" for f in folds)
    tests = [set(f.test) for f in folds]
    assert set().union(*tests) == set(table["patient_id"])
    assert sum(len(t) for t in tests) == table["patient_id"].nunique()  # each patient tested once
    for fold in folds:
        assert_disjoint(fold, table, "patient_family")


def test_kfold_uses_predefined_figshare_folds():
    table = synthetic_table({("glioma", None): 10, ("pituitary", None): 10})
    table["fold"] = table["patient_id"].map(lambda p: 1 + int(p.rsplit("-", 1)[1]) % 5)
    folds = make_folds(table, k=5, seed=0, group_by="patient_id")
    assert all(f.strategy == "5-fold:predefined" for f in folds)
    for fold in folds:
        assert set(table.loc[table["patient_id"].isin(fold.test), "fold"]) == {fold.fold + 1}


def test_split_file_round_trip_and_validation(tmp_path):
    table = synthetic_table(BALANCED)
    split = make_split(table, seed=3)
    path = split.save(tmp_path / "split.json")
    again = load_split(path, table)
    assert (again.train, again.val, again.test) == (split.train, split.val, split.test)
    other = synthetic_table({("x", "1"): 3})
    with pytest.raises(DataError, match="in no part"):
        load_split(path, other)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not a split"):
        load_split(tmp_path / "bad.json", table)


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(DataError, match="cannot be split"):
        make_split(synthetic_table({("astro", "2"): 2}), group_by="patient_id")
    with pytest.raises(DataError, match="--cv"):
        make_folds(synthetic_table({("astro", "2"): 3}), k=5)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 9), min_size=1, max_size=5),
    family_size=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    val=st.sampled_from([0.0, 0.1, 0.2]),
)
def test_property_no_leakage_for_any_grouping(counts, family_size, seed, val):
    classes = {(f"t{i % 3}", str(i)): c for i, c in enumerate(counts)}
    table = synthetic_table(classes, slices=2, families=family_size)
    if table["patient_family"].nunique() < 2 + (val > 0):
        with pytest.raises(DataError):
            make_split(table, val, 0.2, seed=seed)
        return
    split = make_split(table, val, 0.2, seed=seed)
    assert_disjoint(split, table, "patient_family")
    assert len(split.test) > 0 and len(split.train) > 0
    again = make_split(table, val, 0.2, seed=seed)
    assert again.test == split.test  # deterministic for a seed
    assert again.val == split.val and again.train == split.train
    # every patient lands in exactly one part, and a validation share asks for a validation part
    parts = split.train + split.val + split.test
    assert sorted(parts) == sorted(table["patient_id"].unique())
    assert (len(split.val) > 0) == (val > 0)
