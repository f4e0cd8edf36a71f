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
