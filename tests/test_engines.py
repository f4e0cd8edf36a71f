"""Inference engines: ONNX Runtime equals PyTorch (probabilities within 1e-4) on both model
families, the export cache follows the checkpoint's contents, the numpy pre/post-processing
equals the torch functions it stands in for, and the engine choice fails or falls back clearly."""

from __future__ import annotations

import builtins
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mritumor.checkpoints import load_checkpoint, save_checkpoint
from mritumor.cli import main
from mritumor.data.acquire.synthetic import write_synthetic_dataset
from mritumor.data.loading.cache import Preprocessing, preprocess_image
from mritumor.data.loading.datasets import bag_positions
from mritumor.inference import arrays, engines
from mritumor.inference.inputs import discover
from mritumor.inference.predictor import Predictor
from mritumor.models.hierarchical import hierarchical_probabilities
from mritumor.models.loading import load_model

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Two new patients of 6 slices of 40 px (resized to the models' 32 px)."""
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("engines") / "data",
        patients_per_class=1,
        slices_per_patient=6,
        image_size=40,
        seed=4,
        classes=(("astrocytoma", "2"), ("meningioma", "1")),
        patient_prefix="eng",
    )


def copy_of(checkpoint: Path, folder: Path, temperature: float | None = None) -> Path:
    payload = load_checkpoint(checkpoint)
    if temperature is not None:
        payload["temperature"] = temperature
    path = folder / "best.pt"
    save_checkpoint({k: v for k, v in payload.items() if k != "format"}, path)
    return path


def flat(record: dict) -> np.ndarray:
    """Every probability of a record, in a fixed order."""
    values = list((record.get("type_probabilities") or {}).values())
    values += list((record.get("grade_probabilities") or {}).values())
    for entry in record["slices"]:
        values += list((entry.get("type_probabilities") or {}).values())
        values += [entry[k] for k in ("attention_weight",) if k in entry]
    return np.array(values)


@pytest.mark.parametrize("family", ["hierarchical", "multitask"])
def test_onnx_equals_torch_within_1e4(family, hierarchical_checkpoint, multitask_checkpoint, cohort, tmp_path):  # fmt: skip
    checkpoint = copy_of(
        {"hierarchical": hierarchical_checkpoint, "multitask": multitask_checkpoint}[family],
        tmp_path,
        temperature=1.7,
    )
    reference = Predictor(load_model(checkpoint))
    onnx = Predictor.from_checkpoint(checkpoint, engine="onnx", all_slices=False)
    assert onnx.engine.name == "onnx" and reference.engine.name == "torch"
    patients = discover(cohort)
    assert len(patients) == 2
    for patient in patients:
        expected, got = reference(patient).record, onnx(patient).record
        assert [s["name"] for s in got["slices"]] == [s["name"] for s in expected["slices"]]
        assert got["predicted_type"] == expected["predicted_type"]
        a, b = flat(expected), flat(got)
        assert len(a) > 3
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)
        if "tumour_area_px" in expected:
            # masks are thresholded logits: a pixel on the boundary may flip, no more
            slices = sum(e["tumour_area_px"] for e in expected["slices"])
            assert abs(got["tumour_area_px"] - expected["tumour_area_px"]) <= max(2, 0.01 * slices)
    # the parity check recorded on export
    (card,) = (checkpoint.parent / engines.CACHE_FOLDER).glob("*.json")
    parity = json.loads(card.read_text())["parity"]
    assert parity["max_abs_difference"] <= 1e-4


def test_cache_follows_the_checkpoint_contents(hierarchical_checkpoint, tmp_path, monkeypatch):
    checkpoint = copy_of(hierarchical_checkpoint, tmp_path, temperature=2.0)
    exports = []
    real = engines.export_to_cache
    monkeypatch.setattr(engines, "export_to_cache", lambda *a, **k: exports.append(a[1]) or real(*a, **k))  # fmt: skip
    first = Predictor.from_checkpoint(checkpoint, engine="onnx")
    again = Predictor.from_checkpoint(checkpoint, engine="onnx")
    assert len(exports) == 1  # the second used the cache
    assert first.temperature == again.temperature == 2.0
    assert again.engine.path == first.engine.path
    # a retrained checkpoint at the same path: another hash, exported again, new card
    copy_of(hierarchical_checkpoint, tmp_path, temperature=3.0)
    changed = Predictor.from_checkpoint(checkpoint, engine="onnx")
    assert len(exports) == 2 and exports[0] != exports[1]
    assert changed.temperature == 3.0 and changed.engine.path != first.engine.path
    assert engines.checkpoint_key(checkpoint) == exports[1]


def test_unwritable_checkpoint_folder_uses_the_xdg_cache(hierarchical_checkpoint, tmp_path, monkeypatch):  # fmt: skip
    checkpoint = copy_of(hierarchical_checkpoint, tmp_path)
    (tmp_path / engines.CACHE_FOLDER).write_text("a file where the folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    predictor = Predictor.from_checkpoint(checkpoint, engine="onnx")
    assert predictor.engine.path.parent == tmp_path / "xdg" / "mritumor" / "onnx"


def hide_onnxruntime(monkeypatch):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_onnx_engine_without_onnxruntime_is_a_clear_error(hierarchical_checkpoint, cohort, monkeypatch, capsys):  # fmt: skip
    hide_onnxruntime(monkeypatch)
    patient = str(next(cohort.glob("astrocytoma-g2/*")))
    capsys.readouterr()
    argv = ["predict", "--engine", "onnx", "--checkpoint", str(hierarchical_checkpoint), "--input", patient]  # fmt: skip
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err
    assert (
        "ONNX Runtime is not installed" in err and "pip install" in err and "--engine torch" in err
    )


def test_auto_falls_back_to_torch_saying_why(hierarchical_checkpoint, cohort, monkeypatch, caplog):
    hide_onnxruntime(monkeypatch)
    patient = next(cohort.glob("astrocytoma-g2/*"))
    from mritumor.inference.predict import predict

    with caplog.at_level(logging.INFO, logger="mritumor.inference.engines"):
        document = predict(hierarchical_checkpoint, patient, output=None, progress=False, engine="auto")  # fmt: skip
    assert document["model"]["engine"] == "torch"
    assert any("--engine auto: PyTorch, because ONNX Runtime is not installed" in r.getMessage() for r in caplog.records)  # fmt: skip


def test_cached_onnx_predicts_without_importing_torch(multitask_checkpoint, cohort, tmp_path):
    checkpoint = copy_of(multitask_checkpoint, tmp_path)
    Predictor.from_checkpoint(checkpoint, engine="onnx")  # exports and caches
    patient = next(cohort.glob("meningioma-g1/*"))
    code = (
        "import sys, json; from mritumor.cli import main; "
        f"code = main(['-q', 'predict', '--engine', 'onnx', '--checkpoint', {str(checkpoint)!r}, "
        f"'--input', {str(patient)!r}]); "
        "heavy = [m for m in ('torch', 'torchvision', 'lightning', 'monai') if m in sys.modules]; "
        "sys.stderr.write(json.dumps([code, heavy]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    code, heavy = json.loads(done.stderr.strip().splitlines()[-1])
    assert code == 0 and heavy == []
    record = json.loads(done.stdout)["patients"][0]
    expected = Predictor(load_model(checkpoint))(discover(patient)[0]).record
    np.testing.assert_allclose(flat(record), flat(expected), atol=1e-4, rtol=0)


# ----------------------------------------------------------------- numpy twins of torch code


@pytest.mark.parametrize(
    "shape, size, channels",
    [
        ((1, 240, 240), 224, 1),
        ((1, 300, 211), 64, 1),
        ((3, 50, 70), 96, 3),
        ((3, 64, 64), 32, 1),
        ((1, 32, 32), 32, 3),
    ],  # fmt: skip
)
@pytest.mark.parametrize("intensity", ["percentile", "foreground"])
def test_numpy_preprocessing_equals_the_cache(shape, size, channels, intensity):
    rng = np.random.default_rng(sum(shape))
    image = (rng.gamma(2.0, 300.0, size=shape)).astype(np.float32)
    height, width = shape[1:]
    image[:, : height // 4] = 0  # background, which the two methods treat differently
    image[:, :, : width // 5] = rng.uniform(0, 10, size=(shape[0], height, width // 5))
    prep = Preprocessing(image_size=size, channels=channels, intensity=intensity)
    expected = preprocess_image(image, prep).float().numpy()
    got = arrays.preprocess_image(image, prep)
    assert got.shape == expected.shape == (channels, size, size) and got.dtype == np.float32
    difference = np.abs(got - expected)
    # float32 rounding of the same weights: at most one float16 step (< 1e-3), on few pixels
    assert difference.max() <= 2**-11 and (difference > 0).mean() < 0.02


def test_numpy_postprocessing_equals_torch():
    rng = np.random.default_rng(0)
    for length in (1, 3, 8, 17, 40):
        for size in (4, 8, 16):
            for policy in ("uniform", "all"):
                assert arrays.evaluation_bag(length, size, policy) == bag_positions(length, size, policy)  # fmt: skip
    type_logits = rng.normal(size=(2, 3)).astype(np.float32) * 3
    grade_logits = rng.normal(size=(2, 3, 2)).astype(np.float32)
    grade_logits[:, 1, 0] = -np.inf
    grade_logits[:, 2, :] = -np.inf  # a type without any grade
    expected = hierarchical_probabilities(torch.from_numpy(type_logits), torch.from_numpy(grade_logits), 1.5)  # fmt: skip
    got = arrays.hierarchical_probabilities(type_logits, grade_logits, 1.5)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value.numpy(), atol=1e-7)
    for height, width, side in ((240, 200, 224), (20, 31, 32), (64, 64, 32)):
        logits = torch.from_numpy(rng.normal(size=(side, side)).astype(np.float32))
        square = max(height, width)
        top, left = (square - height) // 2, (square - width) // 2
        resized = F.interpolate(logits[None, None], size=(square, square), mode="bilinear", align_corners=False)[0, 0]  # fmt: skip
        expected = (resized[top : top + height, left : left + width] > 0).numpy()
        got = arrays.mask_at_original_size(logits.numpy(), height, width)
        assert got.shape == (height, width)
        assert (got != expected).mean() < 1e-3


def test_threads_come_from_the_machine():
    import os

    threads = engines.machine_threads()
    assert 1 <= threads <= (os.cpu_count() or 1)
    assert threads <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("family", ["hierarchical", "multitask"])
def test_evaluate_with_onnx_equals_torch(family, hierarchical_checkpoint, multitask_checkpoint, trained_data, tmp_path):  # fmt: skip
    import pandas as pd

    from mritumor.inference.evaluate import evaluate_checkpoint

    checkpoint = copy_of(
        {"hierarchical": hierarchical_checkpoint, "multitask": multitask_checkpoint}[family],
        tmp_path,
    )
    tables = {}
    for engine in ("torch", "onnx"):
        result = evaluate_checkpoint(
            checkpoint, trained_data, tmp_path / engine, n_boot=0, progress=False, engine=engine
        )
        assert result["evaluation"]["engine"] == engine
        tables[engine] = pd.read_csv(tmp_path / engine / "predictions.csv")
    torch_table, onnx_table = tables["torch"], tables["onnx"]
    assert len(torch_table) == len(onnx_table) > 0
    numeric = [c for c in torch_table.columns if c.startswith(("p_", "prob")) and torch_table[c].dtype.kind == "f"]  # fmt: skip
    assert numeric, list(torch_table.columns)
    np.testing.assert_allclose(onnx_table[numeric].to_numpy(), torch_table[numeric].to_numpy(), atol=1e-4, rtol=0)  # fmt: skip


def test_numpy_probabilities_of_a_model_without_grades():
    from mritumor.inference import arrays

    logits = np.array([[2.0, 0.5, -1.0]], dtype=np.float32)
    probs = arrays.hierarchical_probabilities(logits, np.zeros((1, 3, 0), np.float32), 2.0)
    expected = np.exp(logits / 2) / np.exp(logits / 2).sum()
    np.testing.assert_allclose(probs["type"], expected, rtol=1e-6)
    assert probs["grade_e2e"].shape == (1, 0) and probs["grade_given_type"].shape == (1, 3, 0)
