"""`mritumor predict` on every input kind: probabilities equal the model applied by hand to the
data layer's own preprocessed tensors, temperature applied, masks at the input's geometry,
clear refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from mritumor.checkpoints import load_checkpoint, save_checkpoint
from mritumor.cli import main
from mritumor.data.acquire.synthetic import write_synthetic_dataset
from mritumor.data.loading.cache import Preprocessing, SliceCache, preprocess_mask
from mritumor.data.reading import io
from mritumor.data.reading.readers import read_catalog
from mritumor.models.loading import hierarchical_network, load_model, multitask_network

SIZE = 32


@pytest.fixture(scope="module")
def hierarchical_ckpt(hierarchical_checkpoint) -> Path:
    return with_temperature(hierarchical_checkpoint, 2.5)


@pytest.fixture(scope="module")
def multitask_ckpt(multitask_checkpoint) -> Path:
    return with_temperature(multitask_checkpoint, 2.5)


def with_temperature(checkpoint: Path, temperature: float) -> Path:
    """A copy with a temperature far from 1, so that calibration visibly changes probabilities."""
    payload = load_checkpoint(checkpoint)
    payload["temperature"] = temperature
    path = checkpoint.with_name(f"T{temperature}.pt")
    save_checkpoint({k: v for k, v in payload.items() if k != "format"}, path)
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("pred") / "data",
        patients_per_class=1,
        slices_per_patient=5,
        image_size=40,
        seed=9,
        classes=(("astrocytoma", "2"), ("meningioma", "1")),
        patient_prefix="new",
    )


def run_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["-q", "predict", "--engine", "torch", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def fails(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err
    assert "mritumor: error:" in err
    return err


def cache_images(data_root: Path, patient: str, checkpoint: Path) -> tuple[torch.Tensor, list]:
    """The patient's slices as the training cache holds them (data layer, not predict.py)."""
    prep = Preprocessing(**load_checkpoint(checkpoint)["preprocessing"])
    catalog = read_catalog(data_root)
    cache = SliceCache.build(catalog.subset([patient]), prep, progress=False)
    images = torch.stack([cache.image(i) for i in range(len(cache))])
    return images, list(cache.catalog.table["image"])


def by_hand_hierarchical(checkpoint: Path, images: torch.Tensor, temperature: float) -> dict:
    model = hierarchical_network(load_checkpoint(checkpoint))
    with torch.no_grad():
        out = model(images[None], torch.ones(1, len(images), dtype=torch.bool))
    types = torch.softmax(out["type_logits"][0] / temperature, -1).numpy()
    # P(g | t): softmax over the grades allowed with t (-inf logits: never seen in training)
    logits = out["grade_logits"][0].numpy().astype(np.float64)
    given = np.zeros_like(logits)
    for t, row in enumerate(logits):
        allowed = np.isfinite(row)
        if allowed.any():
            given[t, allowed] = np.exp(row[allowed] - row[allowed].max())
            given[t] /= given[t].sum()
    return {"type": types, "grade": types @ given, "weights": out["slice_weights"][0].numpy()}


def by_hand_multitask(checkpoint: Path, images: torch.Tensor, temperature: float) -> dict:
    model = multitask_network(load_checkpoint(checkpoint))
    with torch.no_grad():
        out = model(images)
    return {
        "slices": torch.softmax(out["class_logits"] / temperature, -1).numpy(),
        "mask_logits": out["mask_logits"][:, 0],
    }


# ----------------------------------------------------------------------------- hierarchical


def test_patient_folder_hierarchical_equals_model_by_hand(hierarchical_ckpt, cohort, capsys):
    patient_dir = next(cohort.glob("astrocytoma-g2/*"))
    result = run_json(capsys, "--checkpoint", str(hierarchical_ckpt), "--input", str(patient_dir))
    (record,) = result["patients"]
    labels = load_checkpoint(hierarchical_ckpt)["labels"]
    images, files = cache_images(cohort, patient_dir.name, hierarchical_ckpt)
    # bag of 4 evenly spaced slices out of 5: positions 0, 1, 3, 4 (np.linspace rounding)
    bag = [0, 1, 3, 4]
    assert [s["name"] for s in record["slices"]] == [Path(files[i]).name for i in bag]
    assert record["n_slices"] == 5 and record["n_slices_used"] == 4
    expected = by_hand_hierarchical(hierarchical_ckpt, images[bag], 2.5)
    got = np.array([record["type_probabilities"][t] for t in labels["types"]])
    np.testing.assert_allclose(got, expected["type"], atol=2e-6)
    assert got.sum() == pytest.approx(1, abs=1e-6)
    assert record["predicted_type"] == labels["types"][int(expected["type"].argmax())]
    grades = np.array([record["grade_probabilities"][g] for g in labels["grades"]])
    np.testing.assert_allclose(grades, expected["grade"], atol=2e-6)
    weights = np.array([s["attention_weight"] for s in record["slices"]])
    np.testing.assert_allclose(weights, expected["weights"], atol=2e-6)
    assert weights.sum() == pytest.approx(1, abs=1e-6)
    assert result["model"]["temperature"] == 2.5 and result["model"]["calibrated"]

    raw = run_json(
        capsys,
        "--checkpoint", str(hierarchical_ckpt), "--input", str(patient_dir),
        "--no_calibration", "--all_slices",
    )  # fmt: skip
    (record,) = raw["patients"]
    assert record["n_slices_used"] == 5
    expected = by_hand_hierarchical(hierarchical_ckpt, images, 1.0)
    got_raw = np.array([record["type_probabilities"][t] for t in labels["types"]])
    np.testing.assert_allclose(got_raw, expected["type"], atol=2e-6)
    assert raw["model"]["temperature"] == 1.0


def write_dicom(path: Path, pixels: np.ndarray, instance: int, z: float) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.InstanceNumber = "MR", "anon", instance
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -10
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def test_dicom_series_in_slice_position_order(hierarchical_ckpt, cohort, tmp_path, capsys):
    pngs = sorted(cohort.glob("meningioma-g1/*/slice_00[0-3].png"))
    patient = tmp_path / "dicom" / "meningioma-g1" / "D1"  # labelled, for the cache by hand
    # file names in reverse anatomical order: the position (z) must decide
    for k, png in enumerate(pngs):
        pixels = np.asarray(Image.open(png)).astype(np.uint16) * 3
        write_dicom(patient / f"im{9 - k}.dcm", pixels, instance=k + 1, z=float(k))
    result = run_json(capsys, "--checkpoint", str(hierarchical_ckpt), "--input", str(patient))
    (record,) = result["patients"]
    assert [s["name"] for s in record["slices"]] == ["im9.dcm", "im8.dcm", "im7.dcm", "im6.dcm"]
    images, files = cache_images(tmp_path / "dicom", "D1", hierarchical_ckpt)
    assert [Path(f).name for f in files] == ["im9.dcm", "im8.dcm", "im7.dcm", "im6.dcm"]
    expected = by_hand_hierarchical(hierarchical_ckpt, images, 2.5)
    types = load_checkpoint(hierarchical_ckpt)["labels"]["types"]
    got = np.array([record["type_probabilities"][t] for t in types])
    np.testing.assert_allclose(got, expected["type"], atol=2e-6)
    # one DICOM file alone is a one-slice patient
    single = run_json(
        capsys, "--checkpoint", str(hierarchical_ckpt), "--input", str(patient / "im7.dcm")
    )
    assert single["patients"][0]["n_slices"] == 1


def test_nothing_heavy_is_imported_on_the_predict_path(hierarchical_ckpt, cohort):
    """One real process: JSON on stdout, and neither Lightning, MONAI nor the training tasks
    imported by mritumor.inference.predict (building the CLI's parser imports neither:
    tests/test_cli.py)."""
    patient_dir = next(cohort.glob("meningioma-g1/*"))
    code = (
        "import sys, json; from mritumor.inference.predict import predict; "
        f"predict({str(hierarchical_ckpt)!r}, {str(patient_dir)!r}, progress=False); "
        "heavy = [m for m in ('lightning', 'monai', 'pytorch_lightning', 'mritumor.tasks') "
        "if m in sys.modules]; "
        "sys.stderr.write(json.dumps(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
    assert json.loads(done.stdout)["patients"][0]["patient_id"] == patient_dir.name


# ----------------------------------------------------------------------------- multi-task


def boosted(checkpoint: Path) -> Path:
    """A copy whose mask head says 'tumour' everywhere (bias +50): the predicted mask is then
    exactly the image, so the mask's geometry (padding cropped, original size) is testable."""
    payload = load_checkpoint(checkpoint)
    state = dict(payload["model_state"])
    state["seg_out.bias"] = torch.full_like(state["seg_out.bias"], 50.0)
    if "skip_score.bias" in state:
        state["skip_score.bias"] = torch.full_like(state["skip_score.bias"], 50.0)
    payload["model_state"] = state
    path = checkpoint.with_name("boosted.pt")
    save_checkpoint({k: v for k, v in payload.items() if k != "format"}, path)
    return path


def test_single_png_multitask_and_masks_at_original_size(multitask_ckpt, cohort, tmp_path, capsys):
    source = np.asarray(Image.open(next(cohort.glob("astrocytoma-g2/*/slice_002.png"))))
    image = tmp_path / "scan" / "odd.png"  # not square: padding and crop matter
    image.parent.mkdir()
    Image.fromarray(source[:, 4:32]).save(image)
    result = run_json(capsys, "--checkpoint", str(multitask_ckpt), "--input", str(image))
    (record,) = result["patients"]
    assert record["patient_id"] == "odd" and record["n_slices"] == 1
    # by hand: the cache of a manifest listing the file (the data layer's own reading)
    pd.DataFrame(
        {"image": [str(image)], "patient_id": ["x"], "tumor_type": ["astrocytoma"]}
    ).to_csv(tmp_path / "manifest.csv", index=False)
    images, _ = cache_images(tmp_path / "manifest.csv", "x", multitask_ckpt)
    expected = by_hand_multitask(multitask_ckpt, images, 2.5)
    types = load_checkpoint(multitask_ckpt)["labels"]["types"]
    got = np.array([record["slices"][0]["type_probabilities"][t] for t in types])
    np.testing.assert_allclose(got, expected["slices"][0], atol=2e-6)
    np.testing.assert_allclose(
        [record["type_probabilities"][t] for t in types], expected["slices"].mean(0), atol=2e-6
    )
    assert got.sum() == pytest.approx(1, abs=1e-6)

    masks = tmp_path / "masks"
    result = run_json(
        capsys, "--checkpoint", str(boosted(multitask_ckpt)), "--input", str(image),
        "--save_masks", str(masks),
    )  # fmt: skip
    written = Image.open(masks / "odd_mask.png")
    assert written.size == Image.open(image).size == (28, 40)
    pixels = np.asarray(written)
    assert set(np.unique(pixels)) <= {0, 255}
    assert (pixels == 255).all()  # the padding was cropped: all of the image, nothing else
    assert result["patients"][0]["tumour_area_px"] == 28 * 40


def test_mask_back_to_original_size_inverts_the_cache_geometry():
    """A mask taken through the cache's own resize (pad to square, resize) and back lands on
    the original pixels: same place, same orientation, for tall and wide images."""
    from mritumor.inference.predictor import mask_at_original_size

    prep = Preprocessing(image_size=64, channels=1)
    for height, width in ((90, 60), (50, 120)):
        original = np.zeros((height, width), bool)
        original[10:40, 5:25] = True  # off-centre, asymmetric
        small = preprocess_mask(original, prep)[0].float()
        back = mask_at_original_size((small * 2 - 1) * 10, height, width)
        assert back.shape == (height, width)
        iou = (back & original).sum() / (back | original).sum()
        assert iou > 0.85, (height, width, iou)


def test_nifti_volume_masks_keep_shape_affine_and_orientation(multitask_ckpt, tmp_path, capsys):
    rng = np.random.default_rng(3)
    volume = (rng.random((36, 44, 3)) * 400).astype(np.int16)
    affine = np.array([[0.9, 0, 0, -20], [0, 1.1, 0, 7], [0, 0, 3.0, 40], [0, 0, 0, 1]])
    path = tmp_path / "nifti" / "astrocytoma-g2" / "N1" / "t1c.nii.gz"
    path.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    masks = tmp_path / "masks"
    result = run_json(
        capsys, "--checkpoint", str(multitask_ckpt), "--input", str(path),
        "--save_masks", str(masks),
    )  # fmt: skip
    (record,) = result["patients"]
    assert [s["name"] for s in record["slices"]] == [f"t1c.nii.gz[{k}]" for k in range(3)]
    images, _ = cache_images(tmp_path / "nifti", "N1", multitask_ckpt)
    expected = by_hand_multitask(multitask_ckpt, images, 2.5)
    types = load_checkpoint(multitask_ckpt)["labels"]["types"]
    got = np.array([[s["type_probabilities"][t] for t in types] for s in record["slices"]])
    np.testing.assert_allclose(got, expected["slices"], atol=2e-6)
    written = nib.load(str(masks / "t1c_mask.nii.gz"))
    assert written.shape == volume.shape
    np.testing.assert_allclose(written.affine, affine)
    assert written.header.get_zooms() == nib.load(str(path)).header.get_zooms()
    data = np.asarray(written.dataobj)
    assert set(np.unique(data)) <= {0, 1}
    assert int(data.sum()) == record["tumour_area_px"]


def test_mask_volume_lines_up_with_the_slices_the_data_layer_reads(tmp_path):
    """Each written plane, read back by the data layer as a mask, is the 2-D mask given."""
    from mritumor.inference.inputs import PatientInput, SliceRef
    from mritumor.inference.outputs import _write_mask_volume

    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(np.zeros((20, 30, 2), np.float32), np.eye(4)), str(path))
    first = io.read_image(path, 0)[0]
    masks = [np.zeros(first.shape, bool) for _ in range(2)]
    masks[0][2:5, 7:20] = True  # (rows, columns) as io gives the slice: 30 × 20
    masks[1][10:25, 1:3] = True
    refs = [SliceRef(str(path), k, f"v.nii[{k}]") for k in range(2)]
    patient = PatientInput("v", path, refs, volume=path)
    written = _write_mask_volume(patient, refs, masks, tmp_path / "out")
    assert written.name == "v_mask.nii"
    for k in range(2):
        np.testing.assert_array_equal(io.read_mask(written, k), masks[k])


def test_folder_of_patients_writes_csv(multitask_ckpt, cohort, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert (
        main(
            [
                "-q",
                "predict",
                "--engine",
                "torch",
                "--checkpoint",
                str(multitask_ckpt),
                "--input",
                str(cohort),
            ]
        )
        == 0
    )
    assert "2 patient(s) predicted" in capsys.readouterr().out
    patients = pd.read_csv(tmp_path / "predictions.csv")
    slices = pd.read_csv(tmp_path / "predictions_slices.csv")
    assert len(patients) == 2 and len(slices) == 10
    assert patients["patient_id"].str.endswith(("new-astrocytoma-g2-p000", "new-meningioma-g1-p000")).all()  # fmt: skip
    probability = patients.filter(like="p_type_").sum(axis=1)
    np.testing.assert_allclose(probability, 1, atol=1e-6)
    # the patient's probabilities are the mean of its slices'
    first = slices[slices["patient_id"] == patients["patient_id"][0]]
    columns = [c for c in patients.columns if c.startswith("p_type_")]
    np.testing.assert_allclose(first[columns].mean().to_numpy(), patients.loc[0, columns].to_numpy(dtype=float), atol=1e-6)  # fmt: skip
    assert (slices["tumour_area_px"] >= 0).all()
    # the same as JSON, by the --output extension
    out = tmp_path / "all.json"
    main(["-q", "predict", "--engine", "torch", "--checkpoint", str(multitask_ckpt), "--input", str(cohort), "--output", str(out)])  # fmt: skip
    assert len(json.loads(out.read_text())["patients"]) == 2


def test_explain_writes_heat_maps(hierarchical_ckpt, cohort, tmp_path, capsys):
    patient_dir = next(cohort.glob("meningioma-g1/*"))
    heat = tmp_path / "explain"
    result = run_json(
        capsys, "--checkpoint", str(hierarchical_ckpt), "--input", str(patient_dir),
        "--explain", str(heat),
    )  # fmt: skip
    pngs = sorted(heat.glob("*.png"))
    assert len(pngs) == 4 and (heat / "slice_importance.png") in pngs
    for png in pngs:
        assert np.asarray(Image.open(png).convert("L")).std() > 5
    assert len(result["patients"][0]["explain_files"]) == 4


# ----------------------------------------------------------------------------- refusals


def test_clear_errors(hierarchical_ckpt, multitask_ckpt, cohort, tmp_path, capsys):
    ckpt = str(hierarchical_ckpt)
    assert "does not exist" in fails(capsys, "predict", "--checkpoint", ckpt, "--input", str(tmp_path / "nope"))  # fmt: skip
    (tmp_path / "empty").mkdir()
    assert "empty folder" in fails(capsys, "predict", "--checkpoint", ckpt, "--input", str(tmp_path / "empty"))  # fmt: skip
    (tmp_path / "notes.txt").write_text("hello")
    assert "unsupported file type .txt" in fails(capsys, "predict", "--checkpoint", ckpt, "--input", str(tmp_path / "notes.txt"))  # fmt: skip
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    assert "no image files" in fails(capsys, "predict", "--checkpoint", ckpt, "--input", str(tmp_path / "docs"))  # fmt: skip
    patient = str(next(cohort.glob("meningioma-g1/*")))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    assert "other.pt" in fails(capsys, "predict", "--checkpoint", str(tmp_path / "other.pt"), "--input", patient)  # fmt: skip
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    assert "garbage.pt" in fails(capsys, "predict", "--checkpoint", str(tmp_path / "garbage.pt"), "--input", patient)  # fmt: skip
    err = fails(capsys, "predict", "--checkpoint", ckpt, "--input", patient, "--save_masks", str(tmp_path / "m"))  # fmt: skip
    assert "segmentation head" in err and "hierarchical" in err
    assert ".json, .csv or .jsonl" in fails(capsys, "predict", "--checkpoint", ckpt, "--input", patient, "--output", str(tmp_path / "x.txt"))  # fmt: skip
    # a segmentation-only (variant A) network cannot be explained
    payload = load_checkpoint(multitask_ckpt)
    from mritumor.models.multitask import build_multitask_model

    config = {**payload["model_config"], "variant": "A"}
    net = build_multitask_model("A", config["n_classes"], config["backbone"], config["in_channels"], config["image_size"], decoder=config["decoder"])  # fmt: skip
    payload.update(model_config=config, model_state=net.state_dict())
    save_checkpoint({k: v for k, v in payload.items() if k != "format"}, tmp_path / "a.pt")
    assert "no classification head" in fails(capsys, "predict", "--checkpoint", str(tmp_path / "a.pt"), "--input", patient, "--explain", str(tmp_path / "e"))  # fmt: skip
    # an RGB image for a grayscale model: both channel counts named
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(rgb)  # fmt: skip
    err = fails(capsys, "predict", "--checkpoint", ckpt, "--input", str(rgb))
    assert "3-channel" in err and "1-channel" in err


def test_one_loading_layer_holds_the_checkpoints_weights(hierarchical_ckpt, multitask_ckpt, tmp_path):  # fmt: skip
    """Training and inference load through models.loading: the network holds the checkpoint's
    weights bit for bit, in eval mode; weights that do not fit the config are refused, named."""
    from mritumor.checkpoints import CheckpointError
    from mritumor.tasks import hierarchical, multitask

    assert hierarchical.model_from_checkpoint is hierarchical_network
    assert multitask.model_from_checkpoint is multitask_network
    for path in (hierarchical_ckpt, multitask_ckpt):
        state = load_checkpoint(path)["model_state"]
        loaded = load_model(path)
        assert not any(m.training for m in loaded.model.modules())
        got = loaded.model.state_dict()
        assert set(got) == set(state)
        for key, value in state.items():
            assert torch.equal(got[key], value), key
        payload = load_checkpoint(path)
        payload["model_state"] = {k: v for k, v in state.items() if not k.endswith(".bias")}
        broken = save_checkpoint({k: v for k, v in payload.items() if k != "format"}, tmp_path / "b.pt")  # fmt: skip
        with pytest.raises(CheckpointError, match="do not fit") as error:
            load_model(broken)
        assert str(broken) in str(error.value)


def test_unreadable_slice_is_skipped_and_the_bag_chosen_again(hierarchical_ckpt, cohort, tmp_path, capsys):  # fmt: skip
    patient = tmp_path / "P"
    shutil.copytree(next(cohort.glob("astrocytoma-g2/*")), patient)
    (patient / "slice_001.png").write_bytes(b"\x89PNG broken")
    result = run_json(capsys, "--checkpoint", str(hierarchical_ckpt), "--input", str(patient))
    names = [s["name"] for s in result["patients"][0]["slices"]]
    assert names == ["slice_000.png", "slice_002.png", "slice_003.png", "slice_004.png"]


@pytest.mark.parametrize("name", ["small_cnn", "mobilenet_v2", "resnet18"])
def test_folded_batchnorm_gives_the_same_outputs(name):
    """predict folds BatchNorm into the convolutions: same features up to float rounding, the
    norms become Identity where they followed a convolution, the original is left untouched."""
    from torch import nn

    from mritumor.inference.predictor import fold_batchnorm
    from mritumor.models.backbones import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder(name, 1)
    for module in encoder.modules():  # non-trivial running statistics and affine parameters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    encoder.eval()
    folded = fold_batchnorm(encoder)
    norms = lambda m: sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    before, after = norms(encoder), norms(folded)
    if name == "resnet18":  # conv1/bn1 pairs live outside Sequentials: only downsample folds
        assert 0 < before - after < before
    else:
        assert before > 0 and after == 0
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        expected, got = encoder(x), folded(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert norms(encoder) == before  # the original keeps its norms
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(encoder.train())


# ----------------------------------------------------------------------------- many patients


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """Six new patients (3 slices of 32 px each)."""
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("many") / "data",
        patients_per_class=3,
        slices_per_patient=3,
        image_size=32,
        seed=5,
        classes=(("astrocytoma", "2"), ("meningioma", "1")),
        patient_prefix="cohort",
    )


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_skips_exactly_the_finished_patients(hierarchical_ckpt, many, tmp_path, monkeypatch, suffix):  # fmt: skip
    from mritumor.inference.predictor import Predictor

    out = tmp_path / f"all{suffix}"
    argv = ["--checkpoint", str(hierarchical_ckpt), "--input", str(many), "--output", str(out)]
    assert main(["-q", "predict", "--engine", "torch", *argv]) == 0
    full = out.read_text().splitlines(keepends=True)
    sliced = tmp_path / "all_slices.csv"
    full_slices = sliced.read_text() if suffix == ".csv" else None
    # a run killed during the 4th patient: 3 finished, the 4th's line half-written (and, in
    # CSV, its slices' rows already out)
    header = 1
    finished = full[header : header + 3]
    out.write_text("".join(full[:header] + finished) + full[header + 3][:15])
    if suffix == ".csv":
        slice_lines = full_slices.splitlines(keepends=True)
        ids = {line.split(",")[0] for line in finished}
        kept = [slice_lines[0]] + [row for row in slice_lines[1:] if row.split(",")[0] in ids]
        fourth = full[header + 3].split(",")[0]
        unfinished = [row for row in slice_lines[1:] if row.split(",")[0] == fourth]
        sliced.write_text("".join(kept + unfinished))
        done = sorted(ids)
    else:
        done = sorted(json.loads(line)["patient_id"] for line in finished)
    predicted = []
    real = Predictor.predict_prepared
    monkeypatch.setattr(Predictor, "predict_prepared", lambda self, p: predicted.append(p.patient.patient_id) or real(self, p))  # fmt: skip
    assert main(["-q", "predict", "--engine", "torch", "--resume", *argv]) == 0
    every = sorted(p.relative_to(many).as_posix() for p in many.glob("*/*") if p.is_dir())
    assert len(every) == 6 and len(done) == 3
    assert sorted(predicted) == sorted(set(every) - set(done))  # exactly the unfinished ones
    # the resumed file holds each patient once, with the values of the uninterrupted run
    assert sorted(out.read_text().splitlines()) == sorted(line.rstrip("\n") for line in full)
    if suffix == ".csv":
        assert sorted(sliced.read_text().splitlines()) == sorted(full_slices.splitlines())
    # without --resume the file is replaced, and resuming a finished file predicts nothing
    predicted.clear()
    assert main(["-q", "predict", "--engine", "torch", "--resume", *argv]) == 0
    assert predicted == []
    assert main(["-q", "predict", "--engine", "torch", *argv]) == 0
    assert len(predicted) == 6 and len(out.read_text().splitlines()) == len(full)


def test_stream_reads_ahead_and_keeps_the_order(hierarchical_ckpt, many):
    from mritumor.inference.inputs import discover
    from mritumor.inference.predictor import Predictor
    from mritumor.models.loading import load_model

    predictor = Predictor(load_model(hierarchical_ckpt))
    patients = discover(many)
    streamed = [(p.patient_id, r.record) for p, r in predictor.stream(patients)]
    assert [pid for pid, _ in streamed] == [p.patient_id for p in patients]
    for (_, record), patient in zip(streamed, patients, strict=True):
        assert record == predictor(patient).record
