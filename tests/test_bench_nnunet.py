"""benchmarks/bench_nnunet.py on a tiny generated folder of slices: the conversion to an nnU-Net
raw dataset keeps labels and the patient split, and the scoring gives the project's Dice (1 for a
perfect prediction, the hand-computed value for a known overlap, paired with a mritumor run).
Conversion and scoring run without nnU-Net; the tests that need it skip when it is absent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import blob_slice, load_benchmark, write_png

SIZE = 32
NNUNET_ABSENT = "nnunetv2 is not installed (the optional extra mritumor[nnunet])"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_nnunet")


@pytest.fixture
def tiny(tmp_path: Path) -> dict:
    """ROOT/<type>/<patient>/slice_k.png + slice_k_mask.png: 2 types × 3 patients × 3 slices of
    32 px, the last slice of each patient without tumour (an empty mask, as LGG has); and a
    split.json of 3 train, 1 validation and 2 test patients."""
    from mritumor.data.loading.splits import Split

    rng = np.random.default_rng(3)
    root = tmp_path / "tiny"
    patients = []
    for tumour_type in ("glioma", "meningioma"):
        for p in range(3):
            patient = f"{tumour_type}-P{p}"
            patients.append(patient)
            for k in range(3):
                image, mask = blob_slice(rng, size=SIZE, bright=k < 2)
                if k == 2:
                    mask[:] = 0
                write_png(root / tumour_type / patient / f"slice_{k}.png", image)
                write_png(root / tumour_type / patient / f"slice_{k}_mask.png", mask)
    split = Split(
        train=["glioma-P0", "glioma-P1", "meningioma-P0"],
        val=["meningioma-P1"],
        test=["glioma-P2", "meningioma-P2"],
        strategy="by hand",
    )
    return {"root": root, "split": split.save(tmp_path / "run" / "split.json"), "split_obj": split}


@pytest.fixture
def converted(bench, tiny, tmp_path, monkeypatch) -> dict:
    """The tiny folder converted with nnunetv2 made unimportable: conversion must not need it."""
    workdir = bench.Workdir(tmp_path / "work")
    with monkeypatch.context() as blocked:
        blocked.setitem(sys.modules, "nnunetv2", None)
        record = bench.convert(tiny["root"], tiny["split"], workdir, dataset_id=7, name="tiny")
    dataset = workdir.raw / record["dataset"]
    return {**tiny, "workdir": workdir, "record": record, "dataset": dataset}


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_conversion_round_trip_keeps_labels_images_and_split(bench, converted):
    dataset, split = converted["dataset"], converted["split_obj"]
    cases = pd.read_csv(dataset / bench.CASES_FILE, dtype={"patient_id": str})
    assert len(cases) == 18
    part_of = {p: part for part in ("train", "val", "test") for p in split.part(part)}
    for case in cases.itertuples():
        assert case.part == part_of[case.patient_id]  # every case in its patient's part
        test = case.part == "test"
        images, labels = ("imagesTs", "labelsTs") if test else ("imagesTr", "labelsTr")
        label = read_png(dataset / labels / f"{case.case}.png")
        source_mask = read_png(Path(case.mask)) > 0
        assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1}
        np.testing.assert_array_equal(label, source_mask.astype(np.uint8))
        np.testing.assert_array_equal(
            read_png(dataset / images / f"{case.case}_0000.png"), read_png(Path(case.image))
        )  # 8-bit source pixels kept as they are
        assert not (dataset / ("imagesTr" if test else "imagesTs") / f"{case.case}_0000.png").exists()  # fmt: skip
    assert converted["record"]["pixels"] == {"8-bit, unchanged": 18}
    assert converted["record"]["resolution"] == {f"{SIZE}x{SIZE}": 18}
    # nnU-Net's fold 0 is the split's train / validation patients, case by case
    splits = json.loads(
        (converted["workdir"].preprocessed / dataset.name / "splits_final.json").read_text()
    )
    patient_of = dict(zip(cases["case"], cases["patient_id"], strict=True))
    assert len(splits) == 1
    assert {patient_of[c] for c in splits[0]["train"]} == set(split.train)
    assert {patient_of[c] for c in splits[0]["val"]} == set(split.val)
    assert sorted(splits[0]["train"] + splits[0]["val"]) == sorted(
        cases.loc[cases["part"] != "test", "case"]
    )
    # dataset.json as nnU-Net v2 wants it for 2-D PNGs
    described = json.loads((dataset / "dataset.json").read_text())
    assert described["channel_names"] == {"0": "MRI"}
    assert described["labels"] == {"background": 0, "tumour": 1}
    assert described["file_ending"] == ".png"
    assert described["numTraining"] == len(list((dataset / "labelsTr").glob("*.png"))) == 12
    assert dataset.name == "Dataset007_tiny"


def test_converted_dataset_passes_nnunets_integrity_check(converted):
    pytest.importorskip("nnunetv2", reason=NNUNET_ABSENT)
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(converted["dataset"]), num_processes=1)  # raises on a problem


def test_conversion_refuses_a_split_without_validation_patients(bench, tiny, tmp_path):
    from mritumor.data.loading.splits import Split

    split = tiny["split_obj"]
    no_val = Split(train=split.train + split.val, val=[], test=split.test, strategy="x")
    path = no_val.save(tmp_path / "no_val.json")
    with pytest.raises(SystemExit, match="no validation patients"):
        bench.convert(tiny["root"], path, bench.Workdir(tmp_path / "w"))


def _test_cases(bench, converted) -> pd.DataFrame:
    cases = bench.read_cases(converted["workdir"])
    return cases[cases["part"] == "test"].reset_index(drop=True)


def _predictions_folder(bench, converted, tmp_path: Path, change=None) -> Path:
    """The test labels copied as predictions; ``change(case_row, label)`` may alter one."""
    folder = tmp_path / "predicted"
    folder.mkdir()
    labels = converted["dataset"] / "labelsTs"
    for case in _test_cases(bench, converted).itertuples():
        label = read_png(labels / f"{case.case}.png").copy()
        if change is not None:
            label = change(case, label)
        Image.fromarray(label.astype(np.uint8)).save(folder / f"{case.case}.png")
    return folder


def _mritumor_run(bench, converted, folder: Path, dice_of) -> Path:
    """A train-multitask run folder as `compare` reads it: per-slice dice of the test slices
    (image paths written from another working folder, '/x/..' inside), image_size 32."""
    run = folder / "mritumor_run"
    run.mkdir()
    rows = []
    for case in _test_cases(bench, converted).itertuples():
        image = Path(case.image)
        roundabout = image.parent / "x" / ".." / image.name
        rows.append({"patient_id": case.patient_id, "image": str(roundabout), "dice": dice_of(case)})  # fmt: skip
    rows.append({"patient_id": "glioma-P0", "image": "/elsewhere/a.png", "dice": 0.1})  # not a test slice  # fmt: skip
    pd.DataFrame(rows).to_csv(run / "predictions.csv", index=False)
    (run / "config.yaml").write_text(f"image_size: {SIZE}\nvariant: F\n")
    return run


def test_perfect_prediction_scores_dice_one_and_pairs_with_the_run(bench, converted, tmp_path):
    predictions = _predictions_folder(bench, converted, tmp_path)
    run_dice = {True: 0.6, False: 1.0}  # mritumor: 0.6 on tumour slices, right on empty ones
    run = _mritumor_run(bench, converted, tmp_path, lambda case: run_dice[bool(case.tumour)])
    scored = bench.score(converted["workdir"], run, n_boot=50, predictions=predictions)
    head = scored["nnunet"]["headline"]
    for name in ("dice", "dice_tumour_slices", "dice_per_patient", "empty_slices_predicted_empty"):
        assert head[name]["value"] == pytest.approx(1.0), name
    run_table = pd.read_csv(Path(scored["run_folder"]) / "predictions.csv")
    assert (run_table["dice"] == 1).all() and len(run_table) == 6
    paired = scored["paired"]
    assert (paired["n_slices"], paired["n_patients"], paired["n_tumour_slices"]) == (6, 2, 4)
    # mritumor: 4 tumour slices at 0.6, 2 empty at 1 → per slice 2.4+2 / 6, per patient the same
    assert paired["mritumor"]["dice"]["value"] == pytest.approx(4.4 / 6)
    assert paired["mritumor"]["dice_tumour_slices"]["value"] == pytest.approx(0.6)
    assert paired["mritumor"]["dice_per_patient"]["value"] == pytest.approx(2.2 / 3)
    difference = paired["difference"]
    assert difference["dice"]["estimate"] == pytest.approx(1 - 4.4 / 6)
    assert difference["dice_tumour_slices"]["estimate"] == pytest.approx(0.4)
    assert difference["dice_per_patient"]["estimate"] == pytest.approx(1 - 2.2 / 3)
    # every patient contributes the same difference: a degenerate, exact interval
    assert difference["dice_tumour_slices"]["low"] == pytest.approx(0.4)
    assert difference["dice_tumour_slices"]["high"] == pytest.approx(0.4)


def _known_overlap(converted):
    """First test patient: its first tumour slice predicted 5 columns to the right (50 of 100
    pixels overlap: Dice 0.5), its empty slice given a 10 × 10 square (Dice 0); the rest exact."""
    first = sorted(converted["split_obj"].test)[0]
    seen = {"shifted": False}

    def change(case, label):
        if case.patient_id != first:
            return label
        if case.tumour and not seen["shifted"]:
            seen["shifted"] = True
            return np.roll(label, 5, axis=1)
        if not case.tumour:
            label[2:12, 2:12] = 1
        return label

    return change


def test_known_overlap_gives_the_hand_computed_dice(bench, converted, tmp_path):
    predictions = _predictions_folder(bench, converted, tmp_path, _known_overlap(converted))
    scored = bench.score(converted["workdir"], n_boot=50, predictions=predictions)
    head = scored["nnunet"]["headline"]
    # slices: first patient 0.5, 1, 0 (empty reference, square predicted); second 1, 1, 1
    assert head["dice"]["value"] == pytest.approx(4.5 / 6)
    assert head["dice_tumour_slices"]["value"] == pytest.approx(3.5 / 4)
    assert head["dice_per_patient"]["value"] == pytest.approx((1.5 / 3 + 1) / 2)
    assert head["empty_slices_predicted_empty"]["value"] == pytest.approx(0.5)
    per_slice = pd.read_csv(Path(scored["run_folder"]) / "predictions.csv")["dice"]
    assert sorted(per_slice) == pytest.approx([0, 0.5, 1, 1, 1, 1])


def test_dice_from_slice_values_equals_the_projects_report(bench, converted, tmp_path):
    """dice_headline (used for the run folder's per-slice Dice) against segmentation_report
    itself, on the same slices and bootstrap: values and intervals."""
    predictions = _predictions_folder(bench, converted, tmp_path, _known_overlap(converted))
    test = _test_cases(bench, converted)
    truth, predicted = bench.read_test_masks(converted["workdir"], predictions, test)
    patients = test["patient_id"].to_numpy(dtype=str)
    report = bench.project_report(np.stack(truth), np.stack(predicted), patients, 200, 0)
    dice = np.asarray(report["columns"]["dice"], dtype=float)
    tumour = np.stack(truth).reshape(len(truth), -1).any(axis=1)
    headline = bench.dice_headline(dice, tumour, patients, 200, 0)
    for name, interval in headline.items():
        assert interval == pytest.approx(report["headline"][name]), name


def test_nnunet_run_folder_pairs_with_the_mritumor_run_in_compare(bench, converted, tmp_path):
    from mritumor.compare.runs import align, load_runs

    predictions = _predictions_folder(bench, converted, tmp_path)
    run = _mritumor_run(bench, converted, tmp_path, lambda case: 0.5)
    scored = bench.score(converted["workdir"], run, n_boot=20, predictions=predictions)
    document = bench.assemble(converted["workdir"], scored, n_boot=20)
    assert "| per slice |" in (converted["workdir"].root / "bench_nnunet.md").read_text()
    assert document["conversion"]["dataset"] == "Dataset007_tiny"
    aligned = align(load_runs([run, scored["run_folder"]]))
    assert aligned.unit == "image" and len(aligned.units) == 6  # the run's extra row dropped
    assert aligned.dice["nnunet_run"] == pytest.approx(np.ones(6))
    assert aligned.dice["mritumor_run"] == pytest.approx(np.full(6, 0.5))


def test_missing_predictions_are_named(bench, converted, tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(SystemExit, match="6 test case"):
        bench.score(converted["workdir"], predictions=empty)


def test_stages_that_need_nnunet_say_how_to_install_it(bench, converted, monkeypatch):
    monkeypatch.setitem(sys.modules, "nnunetv2", None)
    workdir = str(converted["workdir"].root)
    args = ["train", "--workdir", workdir, "--epochs", "1", "--iterations_per_epoch", "1"]
    with pytest.raises(SystemExit, match=r"pip install 'mritumor\[nnunet\]'"):
        bench.main([*args, "--device", "cpu"])


def test_help_explains_without_nnunet(bench, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nnunetv2", None)
    with pytest.raises(SystemExit) as exit_code:
        bench.main(["--help"])
    assert exit_code.value.code == 0
    text = capsys.readouterr().out
    assert "splits_final.json" in text and "--continue" in text


def test_time_budget_fits_the_epochs_to_the_measured_epoch_time(bench):
    fit = bench.epochs_that_fit
    assert fit(done=1, seconds_left=95, epoch_seconds=[30], most=1000) == 4  # 3 more fit
    assert fit(done=2, seconds_left=20, epoch_seconds=[30, 40], most=1000) == 2  # none fits
    assert fit(done=2, seconds_left=-5, epoch_seconds=[30], most=1000) == 2  # past the end
    assert fit(done=1, seconds_left=1e6, epoch_seconds=[1], most=50) == 50  # capped


def test_budget_flags(bench):
    parser = bench.build_parser()
    args = lambda *extra: parser.parse_args(["train", "--workdir", "w", *extra])  # noqa: E731
    budget = bench.budget_of(args("--epochs", "12", "--iterations_per_epoch", "10"), 0.0)
    assert (budget.epochs, budget.iterations, budget.val_iterations) == (12, 10, 2)
    assert budget.trainer_name == "nnUNetTrainer_12ep_10it"
    timed = bench.budget_of(args("--time_budget_min", "40", "--iterations_per_epoch", "5"), 0.0)
    assert (timed.epochs, timed.end, timed.trainer_name) == (None, 2400, "nnUNetTrainer_40min_5it")
    default = bench.budget_of(args("--default"), 0.0)
    assert default.is_default and default.trainer_name == "nnUNetTrainer"  # nnU-Net's folder
    with pytest.raises(SystemExit, match="--iterations_per_epoch"):
        bench.budget_of(args("--epochs", "3"), 0.0)
    with pytest.raises(SystemExit, match="--continue needs the epoch count"):
        bench.budget_of(args("--time_budget_min", "9", "--iterations_per_epoch", "5", "--continue"), 0.0)  # fmt: skip


@pytest.mark.slow
def test_nnunet_end_to_end_on_the_tiny_set(bench, tiny, tmp_path):
    """All four stages through the command line: nnU-Net plans, preprocesses, trains 1 epoch of
    2 iterations on CPU, predicts the test slices, and the score pairs with a run folder."""
    pytest.importorskip("nnunetv2", reason=NNUNET_ABSENT)
    workdir = tmp_path / "work"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_nnunet.py"
    compute = ["--device", "cpu", "--threads", "1"]
    stages = {
        "convert": ["--data_root", str(tiny["root"]), "--split", str(tiny["split"]), "--name", "tiny"],
        "train": [*compute, "--epochs", "1", "--iterations_per_epoch", "2", "--augment_processes", "0"],
        "predict": compute,
        "score": ["--mritumor_run", str(tmp_path / "mritumor_run"), "--n_boot", "20"],
    }  # fmt: skip
    for stage, arguments in stages.items():
        if stage == "score":  # the run to pair with is written from the case map
            converted = {"workdir": bench.Workdir(workdir), "split_obj": tiny["split_obj"]}
            _mritumor_run(bench, converted, tmp_path, lambda case: 0.5)
        command = [sys.executable, str(script), stage, "--workdir", str(workdir), *arguments]
        subprocess.run(command, check=True, timeout=300)
    # a time budget (0.2 min for the whole command) ends with a final checkpoint of its own
    timed = ["--time_budget_min", "0.2", "--iterations_per_epoch", "1", "--augment_processes", "0"]
    command = [sys.executable, str(script), "train", "--workdir", str(workdir), *compute, *timed]
    subprocess.run([*command, "--no_final_validation"], check=True, timeout=300)
    assert (workdir / "nnUNet_results/Dataset501_tiny/nnUNetTrainer_0.2min_1it__nnUNetPlans__2d/fold_0/checkpoint_final.pth").is_file()  # fmt: skip
    document = json.loads((workdir / "bench_nnunet.json").read_text())
    session = document["training"][0]
    assert session["fold0"]["equals_split"] and session["finished"]
    assert session["budget"]["trainer"] == "nnUNetTrainer_1ep_2it"
    assert document["prediction"]["cases"] == 6
    assert len(list((workdir / "predictions_test").glob("case_*.png"))) == 6
    assert 0 <= document["paired"]["nnunet"]["dice"]["value"] <= 1
    assert document["paired"]["mritumor"]["dice"]["value"] == pytest.approx(0.5)
