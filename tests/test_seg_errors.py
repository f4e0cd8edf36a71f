"""benchmarks/seg_errors.py: Dice at each threshold, recall, precision, empty share and area
ratio against a hand-worked case."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench():
    from conftest import load_benchmark

    return load_benchmark("seg_errors")


def test_error_table_by_hand(bench):
    true = np.zeros((4, 6, 6), bool)
    true[0, 0:2, 0:4] = True  # type 0: 8 px; the prediction finds 4 of them and adds 2
    true[1, 2:4, 2:4] = True  # type 0: 4 px; predicted empty (logits -1: found only below -1)
    true[2, 0:3, 0:3] = True  # type 1: 9 px, predicted exactly
    # slice 3 has no tumour: left out of every figure
    logits = np.full((4, 6, 6), -5.0)
    logits[0, 0:2, 0:2] = 3.0
    logits[0, 2, 0:2] = 3.0
    logits[1, 2:4, 2:4] = -1.0
    logits[2, 0:3, 0:3] = 1.0
    logits[3, 0, 0] = 4.0
    table = bench.error_table(logits, true, np.array([0, 0, 1, 0]), ["a", "b"], (-2.0, 0.0))
    a, b = table["a"], table["b"]
    assert a["n_slices"] == 2 and b["n_slices"] == 1 and table["all"]["n_slices"] == 3
    assert a["pixel_recall"] == pytest.approx(4 / 12) and a["pixel_precision"] == pytest.approx(
        4 / 6
    )
    assert a["empty_prediction_share"] == 0.5
    assert a["median_area_ratio"] == pytest.approx(np.median([6 / 8, 0 / 4]))
    assert b["pixel_recall"] == 1.0 and b["median_area_ratio"] == 1.0
    assert a["dice"]["0"] == pytest.approx((2 * 4 / 14 + 0) / 2)
    assert a["dice"]["-2"] == pytest.approx((2 * 4 / 14 + 1) / 2)  # slice 1 found below -1
    assert b["dice"]["0"] == 1.0 and table["all"]["dice"]["0"] == pytest.approx((8 / 14 + 1) / 3)
    text = bench.markdown(table, (-2.0, 0.0))
    assert text.count("\n") == 4 and "| a | 2 |" in text


def test_validation_logits_average_the_flip(bench, multitask_checkpoint, trained_data):
    """--tta 2: the mask logits are the mean of the network's logits on each validation slice
    and, flipped back, on its horizontal mirror (computed here with torch directly)."""
    import torch

    from mritumor.models.loading import load_model

    run = multitask_checkpoint.parent
    plain, true, types, names = bench.validation_logits(run, str(trained_data), tta=1)
    flipped, true2, _, _ = bench.validation_logits(run, str(trained_data), tta=2)
    assert len(plain) > 0 and plain.shape == true.shape and np.array_equal(true, true2)
    assert len(types) == len(plain) and list(names) == ["astrocytoma", "meningioma", "pituitary"]

    from mritumor.data.loading.cache import SliceCache
    from mritumor.data.loading.datasets import SliceDataset, rows_of_patients
    from mritumor.data.loading.splits import load_split
    from mritumor.data.reading.readers import read_catalog

    loaded = load_model(multitask_checkpoint)
    catalog = read_catalog(str(trained_data))
    val = load_split(run / "split.json", catalog.table).val
    cache = SliceCache.build(catalog.subset(list(val)), loaded.preprocessing, progress=False)
    dataset = SliceDataset(cache, rows_of_patients(cache, cache.catalog.patients), loaded.labels)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        model = loaded.model.eval()
        direct = model(images)["mask_logits"][:, 0].numpy()
        mirrored = model(images.flip(-1))["mask_logits"][:, 0].flip(-1).numpy()
    assert np.allclose(plain, direct, atol=1e-4)
    assert np.allclose(flipped, (direct + mirrored) / 2, atol=1e-4)
    assert not np.allclose(flipped, plain, atol=1e-4)  # the mirror view did change something
