"""Class-conditional (Mondrian) conformal sets: per-class thresholds against order statistics
computed by hand, per-class coverage on generated data where one class is hard (marginal sets
miss it, Mondrian sets do not), the state through a safe checkpoint, old states unchanged, the
two-step model's grade sets, and ``fit-uncertainty --conformal_mondrian``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mritumor.checkpoints import load_checkpoint, save_checkpoint
from mritumor.evaluation.conformal import (
    calibration_scores_by_class,
    class_thresholds,
    conformal_threshold,
    min_calibration_units,
    prediction_sets,
    threshold_from_scores,
)
from mritumor.evaluation.uncertainty import (
    apply_uncertainty,
    fit_uncertainty,
    grade_set_report,
    grade_sets,
    patient_answer,
    set_threshold,
    softmax,
    uncertainty_report,
)

# calibration units of 3 classes: 4 of class 0, 2 of class 1, none of class 2, one unlabelled
CAL_PROBS = np.array(
    [
        [0.9, 0.05, 0.05],  # class 0: LAC 0.1, APS 0.9
        [0.6, 0.3, 0.1],  # class 0: LAC 0.4, APS 0.6
        [0.8, 0.1, 0.1],  # class 0: LAC 0.2, APS 0.8
        [0.7, 0.2, 0.1],  # class 0: LAC 0.3, APS 0.7
        [0.4, 0.5, 0.1],  # class 1: LAC 0.5, APS 0.5 (ranked first)
        [0.5, 0.3, 0.2],  # class 1: LAC 0.7, APS 0.5 + 0.3 = 0.8 (ranked second)
        [0.1, 0.1, 0.8],  # unlabelled: ignored
    ]
)
CAL_LABELS = np.array([0, 0, 0, 0, 1, 1, -1])


def assert_scores(by_class, expected) -> None:
    assert len(by_class) == len(expected)
    for scores, wanted in zip(by_class, expected, strict=True):
        np.testing.assert_allclose(scores, np.asarray(wanted, dtype=float))


def test_class_thresholds_are_the_hand_computed_order_statistics():
    by_class = calibration_scores_by_class(CAL_PROBS, CAL_LABELS, "lac")
    assert_scores(by_class, [[0.1, 0.2, 0.3, 0.4], [0.5, 0.7], []])
    # coverage 0.6: class 0 (n=4) rank ceil(5 * 0.6) = 3 -> 0.3; class 1 (n=2) rank
    # ceil(3 * 0.6) = 2 -> 0.7; class 2 has no unit -> inf (always in the set)
    np.testing.assert_allclose(class_thresholds(by_class, 0.6), [0.3, 0.7, math.inf])
    # coverage 0.4: class 0 rank ceil(5 * 0.4) = 2 -> 0.2; class 1 rank ceil(1.2) = 2 -> 0.7
    np.testing.assert_allclose(class_thresholds(by_class, 0.4), [0.2, 0.7, math.inf])
    # coverage 0.8: class 1 needs rank ceil(2.4) = 3 > 2 units -> inf
    np.testing.assert_allclose(class_thresholds(by_class, 0.8), [0.4, math.inf, math.inf])
    # the marginal threshold of the same units: 6 scores, rank ceil(7 * 0.6) = 5 -> 0.5
    assert conformal_threshold(CAL_PROBS, CAL_LABELS, 0.6, "lac") == pytest.approx(0.5)
    assert [min_calibration_units(c) for c in (0.5, 0.8, 0.9, 0.95)] == [1, 4, 9, 19]

    # LAC scores: 0.75 0.65 0.60 and 0.28 0.80 0.92
    test = np.array([[0.25, 0.35, 0.40], [0.72, 0.20, 0.08]])
    mondrian = prediction_sets(test, class_thresholds(by_class, 0.6), "lac")
    # row 0: class 1 (0.65 <= 0.7) and class 2 (inf, and the arg-max); row 1: class 0
    # (0.28 <= 0.3, and the arg-max) and class 2 (inf), not class 1 (0.8 > 0.7)
    assert mondrian.tolist() == [[False, True, True], [True, False, True]]
    marginal = prediction_sets(test, 0.5, "lac")  # only the arg-max passes 0.5
    assert marginal.tolist() == [[False, False, True], [True, False, False]]
    # with the marginal threshold (0.5) as the fallback of the classes with too few units:
    # class 2 at 0.6, classes 1 and 2 at 0.8; classes with enough units keep their own
    np.testing.assert_allclose(class_thresholds(by_class, 0.6, fallback=0.5), [0.3, 0.7, 0.5])
    np.testing.assert_allclose(class_thresholds(by_class, 0.8, fallback=0.5), [0.4, 0.5, 0.5])
    fallback = prediction_sets(test, class_thresholds(by_class, 0.6, fallback=0.5), "lac")
    assert fallback.tolist() == [[False, True, True], [True, False, False]]
    with pytest.raises(ValueError, match="thresholds of shape"):
        prediction_sets(test, [0.3, 0.7], "lac")


def test_aps_class_thresholds_by_hand():
    by_class = calibration_scores_by_class(CAL_PROBS, CAL_LABELS, "aps")
    assert_scores(by_class, [[0.6, 0.7, 0.8, 0.9], [0.5, 0.8], []])
    thresholds = class_thresholds(by_class, 0.6)
    np.testing.assert_allclose(thresholds, [0.8, 0.8, math.inf])
    # APS scores of [0.25, 0.35, 0.40]: class 2 0.40, class 1 0.75, class 0 1.0
    sets = prediction_sets(np.array([[0.25, 0.35, 0.40]]), thresholds, "aps")
    assert sets.tolist() == [[False, True, True]]


def _simulate(rng: np.random.Generator, per_class: int, signal: list[float]):
    """Probabilities of ``per_class`` units of each class: standard normal logits, the true
    class's raised by its ``signal`` (small signal: a hard class, low true-class probability)."""
    labels = np.repeat(np.arange(len(signal)), per_class)
    logits = rng.normal(0.0, 1.0, (len(labels), len(signal)))
    logits[np.arange(len(labels)), labels] += np.asarray(signal)[labels]
    return softmax(logits), labels


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_marginal_sets_miss_the_hard_class_and_mondrian_sets_do_not(method):
    """Class 2 is hard (true-class probability ~0.5 on average, ~0.97 for the others). With
    2000 calibration and 2000 test units per class, the coverage of one class fluctuates by
    about 0.01 (calibration quantile and test share together), so 0.03 is a 3-sigma margin."""
    rng = np.random.default_rng(20120)
    signal = [3.0, 3.0, 0.5]
    cal_probs, cal_labels = _simulate(rng, 2000, signal)
    test_probs, test_labels = _simulate(rng, 2000, signal)
    nominal = 0.9
    rows = np.arange(len(test_labels))

    marginal = prediction_sets(test_probs, conformal_threshold(cal_probs, cal_labels, nominal, method), method)  # fmt: skip
    covered = marginal[rows, test_labels]
    # the marginal promise holds (a lower bound; deterministic APS plus the arg-max rule
    # over-covers, LAC's continuous scores land on it)...
    assert covered.mean() >= nominal - 0.02
    if method == "lac":
        assert covered.mean() <= nominal + 0.02
    assert covered[test_labels == 2].mean() < nominal - 0.1  # ...by hiding the hard class

    thresholds = class_thresholds(calibration_scores_by_class(cal_probs, cal_labels, method), nominal)  # fmt: skip
    mondrian = prediction_sets(test_probs, thresholds, method)
    for k in range(3):
        assert mondrian[rows, test_labels][test_labels == k].mean() >= nominal - 0.03, k
    # not the trivial answer (every class); APS's scores of a class ranked below the arg-max
    # are cumulative masses near 1, so its sets are larger than LAC's (here 2.2 against 1.3)
    assert mondrian.sum(axis=1).mean() < (2 if method == "lac" else 2.5)

    if method == "lac":  # the same sets from an independent computation of every step
        p_true = cal_probs[np.arange(len(cal_labels)), cal_labels]
        by_hand = np.array(
            [np.sort(1 - p_true[cal_labels == k])[math.ceil(2001 * nominal) - 1] for k in range(3)]
        )
        np.testing.assert_allclose(thresholds, by_hand)
        expected = (1 - test_probs) <= by_hand[None, :]
        expected[rows, test_probs.argmax(axis=1)] = True
        np.testing.assert_array_equal(mondrian, expected)


def _fitted(mondrian: bool, seed: int = 3):
    """A state fitted on 3 well-separated classes: 120 validation slices of 30 patients."""
    rng = np.random.default_rng(seed)
    n, d = 300, 6
    train_labels = rng.integers(0, 3, n)
    centres = rng.normal(0, 3, (3, d))
    train = centres[train_labels] + rng.normal(0, 1, (n, d))
    val_labels = np.repeat(rng.integers(0, 3, 30), 4)  # one class per patient
    val = centres[val_labels] + rng.normal(0, 2, (120, d))
    val_probs = softmax(-(((val[:, None, :] - centres[None]) ** 2).sum(-1)) / 4)
    groups = [f"p{i // 4}" for i in range(120)]  # 30 patients of 4 slices
    state = fit_uncertainty(
        train, train_labels, val, val_probs, val_labels, groups, coverage=0.8, mondrian=mondrian
    )
    return state, val, val_probs, val_labels


def test_a_mondrian_state_round_trips_a_safe_checkpoint_and_gives_the_same_sets(tmp_path):
    state, val, val_probs, val_labels = _fitted(mondrian=True)
    before = apply_uncertainty(state, val, val_probs)["sets"]
    save_checkpoint({"uncertainty": state}, tmp_path / "u.pt")
    loaded = load_checkpoint(tmp_path / "u.pt")["uncertainty"]  # weights_only=True
    conformal = loaded["conformal"]
    assert conformal["mondrian"] is True and len(conformal["class_scores"]) == 3
    assert all(isinstance(s, torch.Tensor) for s in conformal["class_scores"])
    np.testing.assert_array_equal(apply_uncertainty(loaded, val, val_probs)["sets"], before)

    # unit level: each class's own order statistic, by hand (coverage 0.8, then 0.5)
    p_true = val_probs[np.arange(120), val_labels]
    for coverage in (0.8, 0.5, 0.99):  # 0.99: too few units of every class, the marginal one
        everyone = np.sort(1 - p_true)
        rank = math.ceil((len(everyone) + 1) * coverage)
        marginal = everyone[rank - 1] if rank <= len(everyone) else math.inf
        expected = []
        for k in range(3):
            mine = np.sort(1 - p_true[val_labels == k])
            rank = math.ceil((len(mine) + 1) * coverage)
            expected.append(mine[rank - 1] if rank <= len(mine) else marginal)
        np.testing.assert_allclose(set_threshold(loaded, coverage), expected)
        assert (coverage == 0.99) == np.allclose(expected, marginal)
    by_hand = (1 - val_probs) <= np.asarray(set_threshold(loaded))[None, :] + 1e-12
    by_hand[np.arange(120), val_probs.argmax(axis=1)] = True
    np.testing.assert_array_equal(before, by_hand)

    # patient level: the patients' mean probabilities, split by the patient's class
    patient_probs = val_probs.reshape(30, 4, 3).mean(axis=1)
    patient_labels = val_labels.reshape(30, 4)[:, 0]
    patient_true = patient_probs[np.arange(30), patient_labels]
    expected = []
    for k in range(3):
        mine = np.sort(1 - patient_true[patient_labels == k])
        rank = math.ceil((len(mine) + 1) * 0.8)
        expected.append(mine[rank - 1] if rank <= len(mine) else math.inf)
    thresholds = set_threshold(loaded, level="patient")
    np.testing.assert_allclose(thresholds, expected)
    assert np.isfinite(thresholds).all()  # 30 patients: enough of each class for 0.8
    for p in range(30):  # predict's answer for a patient uses those per-class thresholds
        rows = slice(4 * p, 4 * p + 4)
        answer = patient_answer(loaded, val[rows], val_probs[rows], ["a", "b", "c"], True)
        members = (1 - patient_probs[p]) <= np.asarray(expected) + 1e-12
        members[patient_probs[p].argmax()] = True
        assert answer["type_prediction_set"] == [
            n for n, m in zip("abc", members, strict=True) if m
        ], p

    report = uncertainty_report(loaded, val, val_probs, val_labels, ["a", "b", "c"])
    assert report["conformal"]["mondrian"] is True
    for name in "abc":  # on its own calibration units each class is covered
        assert report["conformal"]["per_class"][name]["coverage"] >= 0.8, name


def test_an_old_state_without_the_key_gives_the_sets_it_gave_before(tmp_path):
    state, val, val_probs, val_labels = _fitted(mondrian=False)
    assert state["conformal"]["mondrian"] is False and "class_scores" not in state["conformal"]
    assert "conformal_class_scores" not in state["patient"]
    old = {**state, "conformal": {k: v for k, v in state["conformal"].items() if k != "mondrian"}}
    save_checkpoint({"uncertainty": old}, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt")["uncertainty"]
    # what the code before Mondrian sets computed: one threshold from the stored scores
    threshold = threshold_from_scores(np.asarray(old["conformal"]["scores"]), 0.8)
    assert set_threshold(old) == threshold and isinstance(set_threshold(old), float)
    sets = apply_uncertainty(old, val, val_probs)["sets"]
    np.testing.assert_array_equal(sets, prediction_sets(val_probs, threshold, "lac"))
    np.testing.assert_array_equal(sets, apply_uncertainty(state, val, val_probs)["sets"])
    patient = threshold_from_scores(np.asarray(old["patient"]["conformal_scores"]), 0.8)
    assert set_threshold(old, level="patient") == patient
    # a Mondrian state's marginal scores are the same units' scores (kept for older readers)
    mondrian, *_ = _fitted(mondrian=True)
    np.testing.assert_allclose(mondrian["conformal"]["scores"], state["conformal"]["scores"])
    assert (
        uncertainty_report(old, val, val_probs, val_labels, "abc")["conformal"]["mondrian"] is False
    )


def test_grade_sets_of_a_hand_written_state():
    scores = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.5, 0.7]), torch.zeros(0)]
    grade = {"method": "lac", "coverage": 0.6, "scores": torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.7])}  # fmt: skip
    probs = np.array([[0.25, 0.35, 0.40], [0.72, 0.20, 0.08]])
    old = {"grade_conformal": grade}  # no "mondrian": one threshold, 0.5
    assert grade_sets(old, probs).tolist() == [[False, False, True], [True, False, False]]
    new = {"grade_conformal": {**grade, "mondrian": True, "class_scores": scores}}
    # class 2 has no calibration unit: it gets the marginal threshold 0.5 (row 0: its score
    # 0.60 > 0.5 but it is the arg-max; row 1: 0.92 > 0.5, out), not a place in every set
    assert grade_sets(new, probs).tolist() == [[False, True, True], [True, False, False]]
    report = grade_set_report(new, probs, np.array([1, 0]), ["1", "2", "3"])
    assert report["mondrian"] is True and report["coverage"] == 1.0
    assert grade_set_report(old, probs, np.array([1, 0]), ["1", "2", "3"])["coverage"] == 0.5


@pytest.mark.parametrize("mondrian", [True, False, None])
def test_the_two_step_fitting_passes_the_option_to_type_and_grade_sets(monkeypatch, mondrian):
    """fit_patient_uncertainty with the network's outputs stubbed: Mondrian type and grade
    scores when the config asks (None: a config from before the option, marginal)."""
    import mritumor.tasks.uncertainty as tasks

    rng = np.random.default_rng(5)
    n, d = 90, 4
    types, grades = rng.integers(0, 3, n), rng.integers(0, 3, n)
    grades[:5] = -1  # unknown grades are left out
    outputs = {
        "patient_embedding": rng.normal(0, 1, (n, d)) + types[:, None],
        "type_true": types,
        "grade_true": grades,
        "type_logits": torch.as_tensor(rng.normal(0, 1, (n, 3)) + 2 * np.eye(3)[types]),
        "grade_logits": torch.as_tensor(rng.normal(0, 1, (n, 3, 3))),
    }
    val_loader = object()
    monkeypatch.setattr(tasks, "PatientBagDataset", lambda *a, **k: [])
    monkeypatch.setattr(tasks, "predict_bags", lambda model, loader: outputs)
    source = SimpleNamespace(cache=None, patient_ids=[], labels=None, bag_size=4, bag_policy="uniform")  # fmt: skip
    config = SimpleNamespace(bag_slices=None, batch_size=4, coverage=0.8, conformal_method="lac")
    if mondrian is not None:
        config.conformal_mondrian = mondrian
    loaders = {"train_dataset": source, "val": val_loader}
    state = tasks.fit_patient_uncertainty(None, loaders, 1.5, config)

    assert state["conformal"]["mondrian"] is bool(mondrian)
    assert state["grade_conformal"]["mondrian"] is bool(mondrian)
    if not mondrian:
        assert "class_scores" not in state["conformal"]
        assert "class_scores" not in state["grade_conformal"]
        return
    # by hand: P(t) at temperature 1.5, P(g|t), P(g) = sum_t P(t) P(g|t), normalised
    p_type = softmax(outputs["type_logits"].numpy(), 1.5)
    logits = outputs["grade_logits"].numpy()
    p_grade_given_type = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    p_grade = np.einsum("bt,btg->bg", p_type, p_grade_given_type)
    p_grade /= p_grade.sum(axis=1, keepdims=True)
    for k in range(3):
        mine = grades == k
        expected = np.sort(1 - p_grade[mine, k])
        np.testing.assert_allclose(state["grade_conformal"]["class_scores"][k], expected, atol=1e-6)  # fmt: skip
        expected = np.sort(1 - p_type[types == k, k])
        np.testing.assert_allclose(state["conformal"]["class_scores"][k], expected, atol=1e-6)


def test_fit_uncertainty_flag_stores_a_mondrian_state(
    multitask_checkpoint, trained_data, tmp_path, capsys
):
    from mritumor.cli import main
    from mritumor.inference.refit import refit_uncertainty

    output = tmp_path / "mondrian.pt"
    capsys.readouterr()
    assert main(["fit-uncertainty", "--checkpoint", str(multitask_checkpoint),
                 "--data_root", str(trained_data), "--output", str(output),
                 "--conformal_mondrian"]) == 0  # fmt: skip
    assert "Mondrian (per-class) sets" in capsys.readouterr().out
    before = load_checkpoint(multitask_checkpoint)["uncertainty"]
    state = load_checkpoint(output)["uncertainty"]
    assert before["conformal"].get("mondrian", False) is False  # trained without the flag
    n_types = len(load_checkpoint(output)["labels"]["types"])
    for part, old, key, marginal in (
        (state["conformal"], before["conformal"], "class_scores", "scores"),
        (state["patient"], before["patient"], "conformal_class_scores", "conformal_scores"),
    ):
        assert len(part[key]) == n_types
        # the per-class scores split the same validation units as the marginal ones, which
        # are those training fitted
        joined = np.sort(np.concatenate([np.asarray(s) for s in part[key]]))
        np.testing.assert_allclose(joined, np.asarray(part[marginal]))
        np.testing.assert_allclose(part[marginal], np.asarray(old[marginal]), atol=1e-5)
    assert state["conformal"]["mondrian"] is True
    assert np.shape(set_threshold(state, level="patient")) == (n_types,)

    # without the flag a re-fit keeps the checkpoint's choice; False turns it off
    refit_uncertainty(output, trained_data, tmp_path / "again.pt", progress=False)
    assert load_checkpoint(tmp_path / "again.pt")["uncertainty"]["conformal"]["mondrian"] is True
    refit_uncertainty(output, trained_data, tmp_path / "off.pt", progress=False, mondrian=False)
    off = load_checkpoint(tmp_path / "off.pt")["uncertainty"]
    assert off["conformal"]["mondrian"] is False and "class_scores" not in off["conformal"]
