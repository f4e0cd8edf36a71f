"""predict's out-of-distribution flag and prediction sets: fields equal to the checkpoint's
state applied by hand, a non-brain texture flagged (and answered 'uncertain' with --abstain),
ONNX equal to PyTorch, an older checkpoint said to have none."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_png
from mritumor.checkpoints import load_checkpoint, save_checkpoint
from mritumor.cli import main
from mritumor.evaluation.ood import OODDetector
from mritumor.evaluation.uncertainty import set_threshold
from mritumor.models.loading import hierarchical_network, multitask_network


def predict_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["-q", "predict", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def texture(tmp_path_factory):
    """A patient of four slices that are no brain: high-contrast stripes and checkers."""
    folder = tmp_path_factory.mktemp("texture") / "not_a_brain"
    yy, xx = np.mgrid[:32, :32]
    for k in range(4):
        pattern = ((xx // (k + 2) + yy // (k + 2)) % 2 * 255).astype(np.uint8)
        write_png(folder / f"s{k}.png", pattern)
    return folder


def used_images(checkpoint: dict, data, patient, record) -> torch.Tensor:
    """(S, C, H, W): the slices predict used for this patient, through the cache by hand."""
    from mritumor.data.loading.cache import Preprocessing, SliceCache
    from mritumor.data.reading.readers import read_catalog

    prep = Preprocessing(**checkpoint["preprocessing"])
    cache = SliceCache.build(read_catalog(data).subset([patient.name]), prep, progress=False)
    names = [s["name"] for s in record["slices"]]
    rows = [
        i for i, path in enumerate(cache.catalog.table["image"]) if path.split("/")[-1] in names
    ]
    return torch.stack([cache.image(i) for i in rows])


def test_patient_fields_equal_the_state_applied_by_hand(
    hierarchical_checkpoint, trained_data, capsys
):
    checkpoint = load_checkpoint(hierarchical_checkpoint)
    state = checkpoint["uncertainty"]
    patient = next(trained_data.glob("meningioma-g1/*"))
    (record,) = predict_json(
        capsys, "--checkpoint", str(hierarchical_checkpoint), "--input", str(patient),
        "--engine", "torch",
    )["patients"]  # fmt: skip
    # the pooled embedding by hand, from the network and the slices predict used
    images = used_images(checkpoint, trained_data, patient, record)[None]
    rows = range(images.shape[1])
    with torch.no_grad():
        out = hierarchical_network(checkpoint)(images, torch.ones(1, len(rows), dtype=torch.bool))
    score = OODDetector.from_state(state["ood"]).score(out["patient_embedding"].numpy())[0]
    assert record["ood_score"] == pytest.approx(score, rel=1e-4)
    assert record["ood_threshold"] == pytest.approx(float(state["ood"]["threshold"]))
    assert record["in_distribution"] == (score <= state["ood"]["threshold"])
    probs = np.array(list(record["type_probabilities"].values()))
    expected = [
        t for t, p in record["type_probabilities"].items()
        if 1 - p <= set_threshold(state) + 1e-12 or p == probs.max()
    ]  # fmt: skip
    assert record["type_prediction_set"] == expected
    assert record["predicted_type"] in record["type_prediction_set"]


def test_multitask_patient_score_is_the_median_of_its_slices_feature_scores(
    multitask_checkpoint, trained_data, capsys
):
    """Multi-task: the patient's OOD score is the median of its slices' scores of the network's
    feature statistics (the output the state names), against the patient-level threshold."""
    checkpoint = load_checkpoint(multitask_checkpoint)
    state = checkpoint["uncertainty"]
    assert state["ood"]["features"] == "ood_features"
    patient = next(trained_data.glob("astrocytoma-g2/*"))
    (record,) = predict_json(
        capsys, "--checkpoint", str(multitask_checkpoint), "--input", str(patient),
        "--engine", "torch",
    )["patients"]  # fmt: skip
    with torch.no_grad():
        out = multitask_network(checkpoint)(used_images(checkpoint, trained_data, patient, record))
    scores = OODDetector.from_state(state["ood"]).score(out["ood_features"].double().numpy())
    assert record["ood_score"] == pytest.approx(float(np.median(scores)), rel=1e-4, abs=1e-4)
    assert record["ood_threshold"] == pytest.approx(float(state["patient"]["ood_threshold"]))
    assert record["in_distribution"] == (record["ood_score"] <= record["ood_threshold"])


def test_a_single_image_is_judged_against_the_slice_level_threshold(
    multitask_checkpoint, trained_data, capsys
):
    """One image is one slice: its score and set use the slice-level threshold and scores,
    not the patient-level ones fitted on medians of several slices."""
    checkpoint = load_checkpoint(multitask_checkpoint)
    state = checkpoint["uncertainty"]
    assert state["patient"]["ood_threshold"] != pytest.approx(float(state["ood"]["threshold"]))
    image = sorted(next(trained_data.glob("meningioma-g1/*")).glob("*.png"))[0]
    (record,) = predict_json(
        capsys, "--checkpoint", str(multitask_checkpoint), "--input", str(image), "--engine", "torch"
    )["patients"]  # fmt: skip
    assert record["ood_threshold"] == pytest.approx(float(state["ood"]["threshold"]))
    probs = np.array([record["type_probabilities"][t] for t in checkpoint["labels"]["types"]])
    members = 1 - probs <= set_threshold(state) + 1e-12
    members[probs.argmax()] = True
    expected = [t for t, m in zip(checkpoint["labels"]["types"], members, strict=True) if m]
    assert record["type_prediction_set"] == expected


def test_a_non_brain_texture_is_flagged_and_abstained_on(multitask_checkpoint, texture, capsys):
    argv = ["--checkpoint", str(multitask_checkpoint), "--input", str(texture), "--engine", "torch"]
    (record,) = predict_json(capsys, *argv)["patients"]
    assert record["in_distribution"] is False
    assert record["ood_score"] > record["ood_threshold"]
    assert record["predicted_type"] != "uncertain"
    (abstained,) = predict_json(capsys, *argv, "--abstain")["patients"]
    assert abstained["predicted_type"] == "uncertain"
    assert abstained["abstain_reason"] == "out of distribution"
    assert abstained["type_probabilities"] == record["type_probabilities"]


def test_onnx_gives_the_same_flag_and_set(multitask_checkpoint, texture, trained_data, capsys):
    pytest.importorskip("onnxruntime")  # a dev dependency: present in make test
    for patient in (texture, next(trained_data.glob("pituitary-g1/*"))):
        argv = ["--checkpoint", str(multitask_checkpoint), "--input", str(patient)]
        (torch_record,) = predict_json(capsys, *argv, "--engine", "torch")["patients"]
        (onnx_record,) = predict_json(capsys, *argv, "--engine", "onnx")["patients"]
        for key in ("in_distribution", "type_prediction_set"):
            assert onnx_record[key] == torch_record[key], key
        # a sum of standardised distances can sit near 0: an absolute tolerance too
        assert onnx_record["ood_score"] == pytest.approx(
            torch_record["ood_score"], rel=1e-3, abs=1e-3
        )


def test_a_checkpoint_without_the_state_says_so(
    hierarchical_checkpoint, trained_data, tmp_path, capsys
):
    payload = load_checkpoint(hierarchical_checkpoint)
    payload.pop("uncertainty")
    old = save_checkpoint({k: v for k, v in payload.items() if k != "format"}, tmp_path / "old.pt")
    patient = next(trained_data.glob("meningioma-g1/*"))
    (record,) = predict_json(
        capsys, "--checkpoint", str(old), "--input", str(patient), "--engine", "torch"
    )["patients"]
    assert record["in_distribution"] is None
    assert "before out-of-distribution scores" in record["uncertainty_note"]
    assert "type_prediction_set" not in record


def test_an_empty_mask_on_every_slice_is_said_and_abstained_on(
    multitask_checkpoint, trained_data, tmp_path, monkeypatch, capsys
):
    """A segmenter without a no_tumour type that outlines nothing: ``tumour_found`` false, and
    with --abstain the type becomes 'uncertain' with the reason. The masks are emptied by
    shifting the engine's mask logits; the OOD thresholds are lifted to infinity so that the
    patient is in distribution and only the empty masks can make it abstain."""
    from mritumor.inference.engines import TorchEngine

    payload = load_checkpoint(multitask_checkpoint)
    payload["uncertainty"]["ood"]["threshold"] = float("inf")
    payload["uncertainty"]["patient"]["ood_threshold"] = float("inf")
    lifted = save_checkpoint(
        {k: v for k, v in payload.items() if k != "format"}, tmp_path / "lifted.pt"
    )
    patient = next(trained_data.glob("pituitary-g1/*"))
    argv = ["--checkpoint", str(lifted), "--input", str(patient), "--engine", "torch"]
    (record,) = predict_json(capsys, *argv)["patients"]
    areas = [s["tumour_area_px"] for s in record["slices"]]
    assert record["tumour_found"] == any(a > 0 for a in areas)
    run = TorchEngine.run

    def nothing_segmented(self, images, mask=None):
        out = dict(run(self, images, mask))
        out["mask_logits"] = out["mask_logits"] - 1e4
        return out

    monkeypatch.setattr(TorchEngine, "run", nothing_segmented)
    (empty,) = predict_json(capsys, *argv)["patients"]
    assert empty["tumour_found"] is False and empty["tumour_area_px"] == 0
    assert empty["predicted_type"] == record["predicted_type"]  # no --abstain: still a label
    assert "abstain_reason" not in empty
    (abstained,) = predict_json(capsys, *argv, "--abstain")["patients"]
    assert abstained["in_distribution"] is True
    assert abstained["predicted_type"] == "uncertain"
    assert abstained["abstain_reason"] == "no tumour segmented in any slice"
    assert abstained["type_probabilities"] == record["type_probabilities"]
    monkeypatch.setattr(TorchEngine, "run", run)  # masks back: in distribution, no abstention
    (answered,) = predict_json(capsys, *argv, "--abstain")["patients"]
    if answered["tumour_found"]:
        assert answered["predicted_type"] == record["predicted_type"]
        assert "abstain_reason" not in answered


def test_an_engine_without_the_scored_output_says_so(
    multitask_checkpoint, trained_data, monkeypatch, capsys
):
    """The state scores ``ood_features`` but the engine gives none (e.g. a stale export): the
    record says which output is missing instead of blaming the checkpoint's age."""
    from mritumor.inference.engines import TorchEngine

    run = TorchEngine.run

    def without_features(self, images, mask=None):
        return {k: v for k, v in run(self, images, mask).items() if k != "ood_features"}

    monkeypatch.setattr(TorchEngine, "run", without_features)
    patient = next(trained_data.glob("pituitary-g1/*"))
    argv = ["--checkpoint", str(multitask_checkpoint), "--input", str(patient), "--engine", "torch"]
    (record,) = predict_json(capsys, *argv, "--abstain")["patients"]
    assert record["in_distribution"] is None and "type_prediction_set" not in record
    assert "no 'ood_features' output" in record["uncertainty_note"]
    assert record.get("abstain_reason") != "out of distribution"  # no flag, no OOD abstention
