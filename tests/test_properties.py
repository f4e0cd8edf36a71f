"""Property-based tests that the other modules do not already hold: readers round-trip any
small array, preprocessing maps any finite slice into [0, 1], k-fold never leaks for any
grouping, metrics follow a renaming of the classes, and the two-step probabilities are
distributions. (Splits without leakage, metric ranges and row-order invariance are in
test_splits.py, test_metrics.py and test_calibration.py.)"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from mritumor.data.loading.cache import Preprocessing, preprocess_image
from mritumor.data.loading.splits import make_folds
from mritumor.data.reading import io
from mritumor.evaluation.metrics import classification_metrics
from mritumor.models.hierarchical import hierarchical_probabilities

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sides = st.integers(1, 24)


def in_temporary_folder(write, name: str):
    """Write with ``write(path)`` into a fresh folder and read back with the readers."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        write(path)
        return io.read_image(path)


# ----------------------------------------------------------------------------- readers


@SETTINGS
@given(
    st.tuples(sides, sides).flatmap(lambda s: arrays(np.uint8, s)),
    st.sampled_from([".png", ".tif", ".bmp"]),
)
def test_any_8_bit_gray_slice_reads_back_exactly(image, suffix):
    pixels = in_temporary_folder(lambda p: Image.fromarray(image).save(p), f"s{suffix}")
    assert pixels.shape == (1, *image.shape) and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels[0], image)


@SETTINGS
@given(st.tuples(sides, sides).flatmap(lambda s: arrays(np.uint16, s)))
def test_any_16_bit_png_reads_back_exactly(image):
    pixels = in_temporary_folder(lambda p: Image.fromarray(image).save(p), "s.png")
    np.testing.assert_array_equal(pixels[0], image.astype(np.float32))
    assert 0 <= pixels.min() and pixels.max() <= 65535


@SETTINGS
@given(st.tuples(sides, sides, st.just(3)).flatmap(lambda s: arrays(np.uint8, s)))
def test_any_rgb_png_keeps_its_channels_unless_they_are_equal(image):
    pixels = in_temporary_folder(lambda p: Image.fromarray(image).save(p), "s.png")
    if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(
        image[..., 0], image[..., 2]
    ):
        np.testing.assert_array_equal(pixels, image[None, ..., 0])  # gray stored as RGB
    else:
        np.testing.assert_array_equal(pixels, np.moveaxis(image, -1, 0))


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@SETTINGS
@given(
    st.sampled_from([np.float32, np.float64, np.int16, np.uint8, np.int32]).flatmap(
        lambda dtype: st.tuples(sides, sides).flatmap(
            lambda shape: arrays(
                dtype, shape, elements=finite if np.dtype(dtype).kind == "f" else None
            )
        )
    )
)
def test_any_2d_npy_reads_back_exactly(array):
    pixels = in_temporary_folder(lambda p: np.save(p, array), "s.npy")
    assert pixels.shape == (1, *array.shape) and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels[0], array.astype(np.float32))


@SETTINGS
@given(
    st.tuples(st.integers(2, 4), st.integers(2, 24), st.integers(17, 30)).flatmap(
        lambda s: arrays(np.float32, s, elements=finite)
    ),
    st.booleans(),
)
def test_multichannel_npy_is_read_channel_first_either_way(array, stored_channel_last):
    stored = np.moveaxis(array, 0, -1) if stored_channel_last else array
    pixels = in_temporary_folder(lambda p: np.save(p, stored), "s.npy")
    np.testing.assert_array_equal(pixels, array)


@SETTINGS
@given(
    st.tuples(sides, sides).flatmap(lambda s: arrays(np.float32, s, elements=finite)),
    st.data(),
)
def test_a_single_nan_or_inf_is_refused(array, data):
    y = data.draw(st.integers(0, array.shape[0] - 1))
    x = data.draw(st.integers(0, array.shape[1] - 1))
    array = array.copy()
    array[y, x] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    with pytest.raises(io.SliceReadError, match="NaN or infinite"):
        in_temporary_folder(lambda p: np.save(p, array), "s.npy")


@SETTINGS
@given(
    st.tuples(sides, sides).flatmap(lambda s: arrays(np.bool_, s)),
    st.sampled_from([(255, "png"), (1, "png"), (1, "npy"), (255, "npy")]),
)
def test_any_binary_mask_reads_back(mask, encoding):
    value, suffix = encoding
    stored = mask.astype(np.uint8) * value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"m.{suffix}"
        Image.fromarray(stored).save(path) if suffix == "png" else np.save(path, stored)
        np.testing.assert_array_equal(io.read_mask(path), mask)


@SETTINGS
@given(st.tuples(sides, sides).flatmap(lambda s: arrays(np.uint8, s)))
def test_a_mask_with_any_other_value_is_refused(mask):
    assume(not set(np.unique(mask).tolist()) <= {0, 1, 255})
    with tempfile.TemporaryDirectory() as folder:
        Image.fromarray(mask).save(Path(folder) / "m.png")
        with pytest.raises(io.SliceReadError, match="mask values"):
            io.read_mask(Path(folder) / "m.png")


# ----------------------------------------------------------------------------- preprocessing


@SETTINGS
@given(
    st.tuples(st.sampled_from([1, 3]), sides, sides).flatmap(
        lambda s: arrays(np.float32, s, elements=finite)
    ),
    st.sampled_from([1, 3]),
    st.sampled_from([16, 24]),
)
def test_preprocessing_maps_any_finite_slice_into_the_unit_square(image, channels, size):
    out = preprocess_image(image, Preprocessing(image_size=size, channels=channels))
    assert out.shape == (channels, size, size) and out.dtype == torch.float16
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    if image.min() == image.max():
        assert (out == 0).all()  # a blank slice stays blank, no division by zero


# ----------------------------------------------------------------------------- k-fold


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 8), min_size=1, max_size=4),
    family_size=st.integers(1, 3),
    k=st.integers(2, 5),
    seed=st.integers(0, 2**16),
    val=st.sampled_from([0.0, 0.2]),
)
def test_kfold_never_leaks_for_any_grouping(counts, family_size, k, seed, val):
    rows = []
    for c, count in enumerate(counts):
        for p in range(count):
            patient = f"t{c % 2}-g{c}-p{p}"
            family = f"t{c % 2}-g{c}-f{p // family_size}"
            for s in range(2):
                rows.append(
                    {
                        "image": f"{patient}/{s}.png",
                        "patient_id": patient,
                        "tumor_type": f"t{c % 2}",
                        "grade": str(c),
                        "patient_family": family,
                    }
                )
    table = pd.DataFrame(rows)
    assume(table["patient_family"].nunique() >= k)
    folds = make_folds(table, k, val, seed=seed)
    family_of = dict(zip(table["patient_id"], table["patient_family"], strict=False))
    tested = [p for fold in folds for p in fold.test]
    assert sorted(tested) == sorted(table["patient_id"].unique())  # each patient tested once
    for fold in folds:
        parts = [{family_of[p] for p in part} for part in (fold.train, fold.val, fold.test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert set(fold.train) | set(fold.val) | set(fold.test) == set(family_of)


# ----------------------------------------------------------------------------- metrics


@st.composite
def labelled_probabilities(draw):
    n_classes = draw(st.integers(2, 4))
    n = draw(st.integers(1, 30))
    labels = draw(arrays(np.int64, n, elements=st.integers(0, n_classes - 1)))
    weights = draw(arrays(np.int64, (n, n_classes), elements=st.integers(1, 9)))
    weights = weights + np.arange(n_classes) * 1e-3  # no tie for the arg-max (see below)
    return labels, weights / weights.sum(axis=1, keepdims=True), n_classes


@settings(max_examples=40, deadline=None)
@given(labelled_probabilities(), st.randoms(use_true_random=False))
def test_metrics_follow_a_renaming_of_the_classes(data, random):
    """Permuting the classes (columns, labels and names together) changes no score; each
    class keeps its own per-class scores. The probabilities have no tie for the arg-max: the
    first of tied columns wins, which a permutation legitimately changes."""
    labels, probs, n_classes = data
    names = [f"c{k}" for k in range(n_classes)]
    order = list(range(n_classes))
    random.shuffle(order)
    new_index = {old: new for new, old in enumerate(order)}
    renamed = classification_metrics(
        np.array([new_index[y] for y in labels]), probs[:, order], [names[k] for k in order]
    )
    original = classification_metrics(labels, probs, names)
    pairs = [(key, original[key], renamed[key]) for key in ("n", "accuracy", "macro_f1")]
    pairs += [(key, original[key], renamed[key]) for key in ("balanced_accuracy", "macro_auc")]
    for name in names:
        for key, value in original["per_class"][name].items():
            pairs.append((f"{name}/{key}", value, renamed["per_class"][name][key]))
    for key, a, b in pairs:
        assert (a is None and b is None) or a == pytest.approx(b, rel=1e-12), key


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(2, 4),
    st.integers(1, 4),
    st.floats(0.25, 4.0),
    st.data(),
)
def test_two_step_probabilities_are_distributions(batch, n_types, n_grades, temperature, data):
    type_logits = torch.tensor(
        data.draw(arrays(np.float32, (batch, n_types), elements=st.floats(-20, 20, width=32)))
    )
    grade_logits = torch.tensor(
        data.draw(
            arrays(np.float32, (batch, n_types, n_grades), elements=st.floats(-20, 20, width=32))
        )
    )
    allowed = torch.tensor(data.draw(arrays(np.bool_, (n_types, n_grades))))
    grade_logits = grade_logits.masked_fill(~allowed, float("-inf"))
    probs = hierarchical_probabilities(type_logits, grade_logits, temperature)
    torch.testing.assert_close(probs["type"].sum(-1), torch.ones(batch))
    given_type = probs["grade_given_type"]
    assert (given_type[:, ~allowed] == 0).all()  # a grade never seen with a type gets 0
    has_grades = allowed.any(-1)
    torch.testing.assert_close(
        given_type.sum(-1), has_grades.float().expand(batch, -1), atol=1e-5, rtol=0
    )
    e2e = probs["grade_e2e"]
    expected_mass = (probs["type"] * has_grades.float()).sum(-1)
    torch.testing.assert_close(e2e.sum(-1), expected_mass, atol=1e-5, rtol=0)
    # P(g) = Σ_t P(t) P(g|t), summed out by broadcasting rather than einsum
    torch.testing.assert_close(e2e, (probs["type"][:, :, None] * given_type).sum(1))
    # normalised: a distribution over grades wherever some mass is left, zero where none is
    normalised = probs["grade_e2e_normalised"]
    kept = expected_mass > 1e-6
    torch.testing.assert_close(normalised[kept].sum(-1), torch.ones(int(kept.sum())))
    torch.testing.assert_close(normalised[kept], e2e[kept] / expected_mass[kept, None])
    assert (normalised[expected_mass == 0] == 0).all()
