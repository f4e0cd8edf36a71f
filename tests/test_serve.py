"""`mritumor serve`'s API with FastAPI's test client: every input kind gives what `mritumor
predict` gives for the same files, and every refusal of the issue answers with its status and a
JSON message (never a stack trace), leaving no temporary file behind."""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import shutil
import stat
import struct
import threading
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402
from tests.test_predict import write_dicom  # noqa: E402

from mritumor.cli import main  # noqa: E402
from mritumor.data.acquire.synthetic import write_synthetic_dataset  # noqa: E402
from mritumor.inference.predict import predict  # noqa: E402
from mritumor.server import uploads  # noqa: E402
from mritumor.server.app import Settings, create_app  # noqa: E402
from mritumor.server.service import load_models  # noqa: E402
from mritumor.server.uploads import Limits, sniff  # noqa: E402


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("serve") / "data",
        patients_per_class=1,
        slices_per_patient=5,
        image_size=40,
        seed=11,
        classes=(("astrocytoma", "2"), ("meningioma", "1")),
        patient_prefix="up",
    )


@pytest.fixture(scope="module")
def models(hierarchical_checkpoint, multitask_checkpoint):
    return load_models([hierarchical_checkpoint, multitask_checkpoint])


@pytest.fixture
def tmp_root(tmp_path) -> Path:
    root = tmp_path / "requests"
    root.mkdir()
    return root


def client_for(models, tmp_root: Path, **options) -> TestClient:
    limits = options.pop("limits", Limits())
    return TestClient(create_app(models, Settings(limits=limits, tmp_root=tmp_root, **options)))


@pytest.fixture
def client(models, tmp_root):
    with client_for(models, tmp_root) as test_client:
        yield test_client
    assert list(tmp_root.iterdir()) == [], "a request left files behind"


def slices_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("slice_*.png") if "_mask" not in p.name)


def upload(paths, names=None) -> list:
    names = names or [p.name for p in paths]
    return [("files", (n, p.read_bytes(), "application/octet-stream")) for p, n in zip(paths, names, strict=True)]  # fmt: skip


def expected(checkpoint: Path, input_path: Path, tmp_path: Path) -> dict:
    """`mritumor predict`'s own answer for the same files (the API's reference)."""
    out = tmp_path / f"expected-{input_path.name}.json"
    predict(checkpoint, input_path, output=out, progress=False)
    return json.loads(out.read_text())


def same_prediction(got: dict, want: dict) -> None:
    assert got["predicted_type"] == want["predicted_type"]
    for key in ("type_probabilities", "grade_probabilities"):
        if key in want:
            assert got[key].keys() == want[key].keys()
            np.testing.assert_allclose(list(got[key].values()), list(want[key].values()), atol=1e-6)  # fmt: skip
    assert [s["name"] for s in got["slices"]] == [s["name"] for s in want["slices"]]
    for mine, theirs in zip(got["slices"], want["slices"], strict=True):
        for key in ("attention_weight", "tumour_area_px"):
            if key in theirs:
                assert mine[key] == pytest.approx(theirs[key], abs=1e-6)


def decode_png(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def zip_bytes(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def refused(response, status: int, words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and words in body["error"], body
    assert "Traceback" not in response.text and "/tmp" not in body["error"]
    return body


# ----------------------------------------------------------------------------- input kinds


def test_png_slices_give_predicts_answer(client, hierarchical_checkpoint, cohort, tmp_path):
    patient = next(cohort.glob("astrocytoma-g2/*"))
    files = slices_of(patient)
    response = client.post("/predict", files=upload(files), data={"model": "hierarchical", "images": "true"})  # fmt: skip
    assert response.status_code == 200, response.text
    document = response.json()
    (record,) = document["patients"]
    (want,) = expected(hierarchical_checkpoint, patient, tmp_path)["patients"]
    same_prediction(record, want)
    assert record["patient_id"] == "patient" and record["input"] == "patient"
    assert document["model"]["checkpoint"] == "hierarchical" and document["skipped"] == []
    # the slice the model saw, at the checkpoint's size; hierarchical models segment nothing
    size = document["model"]["image_size"]
    assert all(decode_png(s["image_png"]).shape == (size, size) for s in record["slices"])
    assert not any("mask_png" in s for s in record["slices"])


def test_zip_of_a_patient_folder_with_masks_as_png(client, multitask_checkpoint, cohort, tmp_path):
    patient = next(cohort.glob("meningioma-g1/*"))
    entries = {f"{patient.name}/{p.name}": p.read_bytes() for p in patient.iterdir()}
    entries[f"{patient.name}/notes.txt"] = b"left out: not an image"
    response = client.post("/predict", files=[("files", ("case.zip", zip_bytes(entries), "application/zip"))], data={"model": "multitask"})  # fmt: skip
    assert response.status_code == 200, response.text
    (record,) = response.json()["patients"]
    (want,) = expected(multitask_checkpoint, patient, tmp_path)["patients"]
    same_prediction(record, want)  # mask files in the zip are set aside as predict does
    assert record["patient_id"] == patient.name
    for item in record["slices"]:
        mask = decode_png(item["mask_png"])
        assert mask.shape == (40, 40) and set(np.unique(mask)) <= {0, 255}
        assert int((mask == 255).sum()) == item["tumour_area_px"]


def test_dicom_zip_in_slice_position_order(client, hierarchical_checkpoint, cohort, tmp_path):
    pngs = slices_of(next(cohort.glob("meningioma-g1/*")))[:4]
    series = tmp_path / "series"
    for k, png in enumerate(pngs):  # names in reverse anatomical order: position decides
        pixels = np.asarray(Image.open(png)).astype(np.uint16) * 3
        write_dicom(series / f"im{9 - k}.dcm", pixels, instance=k + 1, z=float(k))
    data = zip_bytes({f"series/{p.name}": p.read_bytes() for p in series.iterdir()})
    response = client.post("/predict", files=[("files", ("dicom.zip", data, "application/zip"))])
    assert response.status_code == 200, response.text
    (record,) = response.json()["patients"]
    assert [s["name"] for s in record["slices"]] == ["im9.dcm", "im8.dcm", "im7.dcm", "im6.dcm"]
    (want,) = expected(hierarchical_checkpoint, series, tmp_path)["patients"]
    same_prediction(record, want)


def test_zip_of_a_study_gives_one_result_per_series_and_the_seg(client, multitask_checkpoint, tmp_path):  # fmt: skip
    """A PACS-like study (T1 post-contrast, FLAIR, localizer) zipped: one result per image
    series, as predict gives it, the localizer skipped with its reason, and each series' DICOM
    SEG downloadable from the answer (a data URL) referencing that series' instances."""
    import pydicom

    from dicom_factory import write_study

    rng = np.random.default_rng(8)
    files = write_study(tmp_path / "P1", [(rng.random((40, 40)) * 900).astype(np.uint16) for _ in range(3)])  # fmt: skip
    data = zip_bytes({f"P1/{p.name}": p.read_bytes() for p in (tmp_path / "P1").iterdir()})
    response = client.post(
        "/predict", files=[("files", ("study.zip", data, "application/zip"))], data={"model": "multitask"}
    )  # fmt: skip
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [r["patient_id"] for r in answer["patients"]] == ["P1/3_T1_AX_POST_GAD", "P1/4_AX_FLAIR"]
    (skipped,) = answer["skipped"]
    assert "localizer" in skipped["reason"] and str(tmp_path) not in skipped["reason"]
    want = expected(multitask_checkpoint, tmp_path / "P1", tmp_path)["patients"]
    for record, reference, key in zip(answer["patients"], want, ("t1c", "flair"), strict=True):
        same_prediction(record, reference)
        assert "segmentation_file" not in record and "sidecar_file" not in record  # no server path
        header, _, payload = record["segmentation_dicom"].partition(",")
        assert header == "data:application/dicom;base64"
        segmentation = pydicom.dcmread(io.BytesIO(base64.b64decode(payload)))
        assert segmentation.Modality == "SEG"
        referenced = {
            item.ReferencedSOPInstanceUID
            for item in segmentation.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        }
        assert referenced == {pydicom.dcmread(f).SOPInstanceUID for f in files[key]}
        assert record["segmentation_name"] == f"{record['patient_id'].split('/')[1]}_seg.dcm"


def test_nifti_volume(client, multitask_checkpoint, tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "t1c.nii.gz"
    nib.save(nib.Nifti1Image((rng.random((36, 44, 3)) * 400).astype(np.int16), np.eye(4)), str(path))  # fmt: skip
    # a misleading name: the content (gzip holding a NIfTI header) decides
    response = client.post("/predict", files=upload([path], ["volume.bin"]), data={"model": "multitask"})  # fmt: skip
    assert response.status_code == 200, response.text
    (record,) = response.json()["patients"]
    (want,) = expected(multitask_checkpoint, path, tmp_path)["patients"]
    assert [s["name"] for s in record["slices"]] == ["volume.nii.gz[0]", "volume.nii.gz[1]", "volume.nii.gz[2]"]  # fmt: skip
    np.testing.assert_allclose(
        [list(s["type_probabilities"].values()) for s in record["slices"]],
        [list(s["type_probabilities"].values()) for s in want["slices"]],
        atol=1e-6,
    )
    assert record["tumour_area_px"] == want["tumour_area_px"]


def test_content_not_name_decides_and_several_patients(client, cohort, tmp_path):
    patient = next(cohort.glob("astrocytoma-g2/*"))
    jpeg = io.BytesIO()
    Image.open(slices_of(patient)[0]).save(jpeg, format="JPEG")
    # JPEG bytes under a .png name and PNG bytes under a .txt name are both read as what they are
    files = [("files", ("a.png", jpeg.getvalue(), "image/png")), ("files", ("b.txt", slices_of(patient)[1].read_bytes(), "text/plain"))]  # fmt: skip
    response = client.post("/predict", files=files)
    assert response.status_code == 200, response.text
    assert [s["name"] for s in response.json()["patients"][0]["slices"]] == ["a.jpg", "b.png"]
    entries = {f"{p.parent.name}/{p.name}": p.read_bytes() for p in cohort.glob("*/*/slice_*.png")}
    response = client.post("/predict", files=[("files", ("all.zip", zip_bytes(entries), "application/zip"))])  # fmt: skip
    assert response.status_code == 200, response.text
    ids = sorted(r["patient_id"] for r in response.json()["patients"])
    assert ids == sorted(p.name for p in cohort.glob("*/*"))


def test_explain_adds_heat_maps_of_the_top_slices(client, cohort):
    files = slices_of(next(cohort.glob("meningioma-g1/*")))
    response = client.post("/predict", files=upload(files), data={"model": "multitask", "explain": "1"})  # fmt: skip
    assert response.status_code == 200, response.text
    maps = [s for s in response.json()["patients"][0]["slices"] if "heatmap_png" in s]
    assert len(maps) == 3
    assert all(decode_png(s["heatmap_png"]).shape == (32, 32, 4) for s in maps)


def test_models_health_docs_and_page(client, models, hierarchical_checkpoint):
    cards = {c["name"]: c for c in client.get("/models").json()["models"]}
    assert list(cards) == ["hierarchical", "multitask"]
    loaded = models["hierarchical"].loaded
    card = cards["hierarchical"]
    assert card["types"] == list(loaded.labels.types) and card["grades"] == list(loaded.labels.grades)  # fmt: skip
    assert card["input"] == {"image_size": 32, "channels": 1, "bag_size": 4}
    assert card["training_data"]["patients"] == {k: len(loaded.checkpoint["split"][k]) for k in ("train", "val", "test")}  # fmt: skip
    metrics = hierarchical_checkpoint.parent / "test_metrics.json"
    assert card["test_metrics"] == json.loads(metrics.read_text())
    assert "low" in card["test_metrics"]["tumor_type_accuracy"]
    assert card["recipe"]["bag_size"] == 4 and "data_root" not in card["recipe"]
    assert cards["multitask"]["segments"] is True and cards["multitask"]["variant"] == "D"
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["models"] == ["hierarchical", "multitask"]
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]  # fmt: skip
    for asset in [page.text, client.get("/static/app.js").text, client.get("/static/style.css").text]:  # fmt: skip
        assert "http://" not in asset and "https://" not in asset and "//cdn" not in asset
    refused(client.get("/static/../app.py"), 404, "Not Found")


# ----------------------------------------------------------------------------- refusals


def test_refusals_of_bodies_and_files(models, tmp_root, cohort):
    slices = slices_of(next(cohort.glob("astrocytoma-g2/*")))
    limits = Limits(max_request_bytes=200_000, max_file_bytes=50_000, max_files=3, max_slices=4)
    with client_for(models, tmp_root, limits=limits) as client:
        refused(client.post("/predict"), 415, "multipart/form-data")
        refused(client.post("/predict", json={"files": []}), 415, "multipart/form-data")
        refused(client.post("/predict", files={"other": ("x", b"y")}, data={"a": "b"}), 400, "field 'files'")  # fmt: skip
        refused(client.post("/predict", data={"model": "hierarchical"}, files=[]), 415, "multipart")  # fmt: skip
        refused(client.post("/predict", files=[("files", ("e.png", b"", "image/png"))]), 400, "empty file")  # fmt: skip
        refused(client.post("/predict", files=[("files", ("x.png", b"<html>hello</html>" * 30, "image/png"))]), 415, "not a supported file type")  # fmt: skip
        refused(client.post("/predict", files=[("files", ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(60_000), "image/png"))]), 413, "larger than 50000")  # fmt: skip
        refused(
            client.post("/predict", files=upload(slices[:4])),
            413,
            "files in one request; at most 3",
        )
        refused(client.post("/predict", content=b"x" * 300_000, headers={"content-type": "multipart/form-data; boundary=a"}), 413, "at most 200000")  # fmt: skip
        refused(client.post("/predict", files=upload(slices[:1]), data={"model": "nope"}), 404, "no model 'nope'")  # fmt: skip
        zipped = zip_bytes({f"p/s{k}.png": slices[k % 5].read_bytes() for k in range(3)})
        refused(client.post("/predict", files=[("files", ("z.zip", zipped, "application/zip")), ("files", ("a.png", slices[0].read_bytes(), "image/png"))]), 400, "only file")  # fmt: skip
        five = zip_bytes({f"p/s{k}.png": slices[k].read_bytes() for k in range(3)} | {f"q/s{k}.png": slices[k].read_bytes() for k in range(2)})  # fmt: skip
        limits_zip = client.post("/predict", files=[("files", ("z.zip", five, "application/zip"))])
        refused(limits_zip, 413, "entries; at most 3")
        write_dicom_bytes = tmp_root.parent / "t.dcm"
        write_dicom(write_dicom_bytes, np.ones((20, 20)), 1, 0.0)
        truncated = write_dicom_bytes.read_bytes()[:-300]
        refused(client.post("/predict", files=[("files", ("t.dcm", truncated, "application/dicom"))]), 422, "patient: no slice could be decoded")  # fmt: skip
    with client_for(models, tmp_root, limits=Limits(max_slices=4)) as client:
        refused(client.post("/predict", files=upload(slices[:5])), 413, "5 slices in the upload; at most 4")  # fmt: skip
    assert list(tmp_root.iterdir()) == []


def symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("p/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def nifti_header(dims: tuple[int, ...]) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape((2, 2, 2))
    raw = bytearray(header.binaryblock)
    raw[40:56] = struct.pack("<8h", len(dims), *dims, *[1] * (7 - len(dims)))
    return bytes(raw) + b"\0" * 4 + bytes(64)


def test_refusals_of_archives_and_volumes(client, cohort):
    png = slices_of(next(cohort.glob("astrocytoma-g2/*")))[0].read_bytes()
    cases = {
        "absolute path": (zip_bytes({"/etc/cron.d/x.png": png}), 400, "absolute path"),
        "traversal": (zip_bytes({"p/../../x.png": png}), 400, "(..)"),
        "link": (symlink_zip(), 400, "symbolic link"),
        "bomb": (zip_bytes({"p/s.png": b"\x89PNG\r\n\x1a\n" + bytes(20 * 2**20)}), 413, "zip bomb"),
        "no images": (zip_bytes({"p/readme.txt": b"nothing to see"}), 415, "no image file"),
        "damaged": (b"PK\x03\x04" + bytes(200), 400, "not a readable zip"),
        "absurd nifti": (nifti_header((30000, 30000, 30000)), 413, "voxels"),
        "gzip, no nifti": (gzip.compress(b"just text" * 100), 415, "holds no NIfTI"),
        "nifti of 0 slices": (gzip.compress(nifti_header((4, 4, 0))), 400, "dimension 0"),
    }
    for name, (data, status, words) in cases.items():
        response = client.post("/predict", files=[("files", (f"{name}.zip", data, "application/octet-stream"))])  # fmt: skip
        refused(response, status, words)
        assert client.get("/health").status_code == 200


def test_zip_entries_that_lie_about_their_size_are_stopped(tmp_path):
    """A directory entry announcing 100 bytes for an entry that inflates to 8 MiB passes the
    header checks; zipfile then reads no more than the 100 bytes announced and the CRC
    mismatch refuses it: nothing beyond that is written."""
    data = zip_bytes({"p/s.png": b"\x89PNG\r\n\x1a\n" + bytes(8 * 2**20)})
    archive = tmp_path / "lie.zip"
    archive.write_bytes(data)
    with zipfile.ZipFile(archive) as z:
        info = z.infolist()[0]
    raw = bytearray(data)
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24 : central + 28] = struct.pack("<I", 100)  # uncompressed size in the directory
    archive.write_bytes(bytes(raw))
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(uploads.UploadError, match="damaged entry") as refusal:
        uploads.extract_zip(archive, target, Limits(max_file_bytes=2**20), "lie.zip")
    assert refusal.value.status == 400 and info.file_size > 2**20
    assert sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) <= 100


def test_sniffing_by_magic_bytes(tmp_path):
    assert sniff(b"\x89PNG\r\n\x1a\n....") == ".png"
    assert sniff(b"\xff\xd8\xff\xe0") == ".jpg"
    assert sniff(b"II*\x00") == ".tif" and sniff(b"MM\x00*") == ".tif"
    assert sniff(b"\x93NUMPY\x01\x00") == ".npy"
    assert sniff(bytes(128) + b"DICM") == ".dcm"
    assert sniff(nifti_header((4, 4, 4))) == ".nii"
    assert sniff(b"GIF89a" + bytes(400)) is None and sniff(b"%PDF-1.7") is None


def test_busy_server_answers_503_with_retry_after(models, tmp_root, cohort):
    files = upload(slices_of(next(cohort.glob("astrocytoma-g2/*"))))
    entry = models["hierarchical"]
    release, started = threading.Event(), threading.Event()
    real = entry.predictor

    class Blocking:
        def __call__(self, patient):
            started.set()
            release.wait(10)
            return real(patient)

        def header(self):
            return real.header()

    entry.predictor = Blocking()
    try:
        with client_for(models, tmp_root, workers=1, queue=0, retry_after=7) as client:
            results = {}
            thread = threading.Thread(target=lambda: results.update(first=client.post("/predict", files=files)))  # fmt: skip
            thread.start()
            assert started.wait(10)
            busy = client.post("/predict", files=files)
            body = refused(busy, 503, "busy")
            assert busy.headers["retry-after"] == "7" and body["status"] == 503
            assert client.get("/health").json()["busy"] == 1
            release.set()
            thread.join(10)
            assert results["first"].status_code == 200
            assert (
                client.post("/predict", files=files).status_code == 200
            )  # the place is free again
    finally:
        entry.predictor = real
    assert list(tmp_root.iterdir()) == []


def test_timeout_answers_504_and_the_work_cleans_up(models, tmp_root, cohort):
    files = upload(slices_of(next(cohort.glob("astrocytoma-g2/*"))))
    entry = models["hierarchical"]
    real, finished = entry.predictor, threading.Event()

    class Slow:
        def __call__(self, patient):
            time.sleep(1.0)
            try:
                return real(patient)
            finally:
                finished.set()

        def header(self):
            return real.header()

    entry.predictor = Slow()
    try:
        with client_for(models, tmp_root, timeout=0.2) as client:
            refused(client.post("/predict", files=files), 504, "longer than 0.2 s")
            assert finished.wait(10)
            for _ in range(50):  # the folder goes when the work ends, after the answer
                if not list(tmp_root.iterdir()) and client.get("/health").json()["busy"] == 0:
                    break
                time.sleep(0.05)
            assert list(tmp_root.iterdir()) == [] and client.get("/health").json()["busy"] == 0
    finally:
        entry.predictor = real


def test_unexpected_error_is_a_bare_500(models, tmp_root, cohort):
    entry = models["hierarchical"]
    real = entry.predictor

    class Broken:
        def __call__(self, patient):
            raise RuntimeError("secret internal detail")

        def header(self):
            return real.header()

    entry.predictor = Broken()
    try:
        with client_for(models, tmp_root) as client:
            response = client.post("/predict", files=upload(slices_of(next(cohort.glob("astrocytoma-g2/*")))))  # fmt: skip
            refused(response, 500, "internal server error")
            assert "secret" not in response.text
    finally:
        entry.predictor = real
    assert list(tmp_root.iterdir()) == []


def test_token_is_required_when_set(models, tmp_root, cohort):
    files = upload(slices_of(next(cohort.glob("astrocytoma-g2/*")))[:2])
    with client_for(models, tmp_root, token="s3cret") as client:
        refused(client.post("/predict", files=files), 401, "token")
        refused(client.get("/models"), 401, "token")
        refused(client.post("/predict", files=files, headers={"Authorization": "Bearer wrong"}), 401, "token")  # fmt: skip
        assert client.get("/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/predict", files=files, headers={"Authorization": "Bearer s3cret"}).status_code == 200  # fmt: skip
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200


def test_access_log_has_one_line_per_request_without_data(client, cohort, caplog):
    files = upload(slices_of(next(cohort.glob("astrocytoma-g2/*"))))
    with caplog.at_level(logging.INFO, logger="mritumor.server.access"):
        client.get("/health")
        client.post("/predict", files=files)
        client.post("/predict", files=[("files", ("x.png", b"not an image" * 10, "image/png"))])
    lines = [r.getMessage() for r in caplog.records if r.name == "mritumor.server.access"]
    assert len(lines) == 3
    assert " GET /health 200 " in lines[0] and " POST /predict 200 " in lines[1]
    size = sum(len(f[1][1]) for f in files)
    assert f"in={size} " in lines[1] and lines[1].endswith(" ok")
    assert " POST /predict 415 " in lines[2] and "error: x.png: not a supported" in lines[2]
    assert all("ms " in line for line in lines)


# ----------------------------------------------------------------------------- command line


def test_command_refuses_exposure_without_token(hierarchical_checkpoint, capsys):
    argv = ["serve", "--checkpoint", str(hierarchical_checkpoint)]
    assert main([*argv, "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    assert main([*argv, "--host", "10.1.2.3", "--token", "t", "--no-auth"]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_missing_extra_is_named(hierarchical_checkpoint, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))  # fmt: skip
    assert main(["serve", "--checkpoint", str(hierarchical_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "uvicorn" in err and "mritumor[serve]" in err


def test_local_hosts():
    from mritumor.server.run import is_local

    assert is_local("127.0.0.1") and is_local("localhost") and is_local("::1") and is_local("127.0.0.2")  # fmt: skip
    assert not is_local("0.0.0.0") and not is_local("192.168.1.4") and not is_local("example.org")  # fmt: skip


def test_temporary_files_go_with_the_request(tmp_path):
    with uploads.request_folder(tmp_path) as folder:
        (folder / "a").write_bytes(b"x")
        assert folder.parent == tmp_path
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), uploads.request_folder(tmp_path) as folder:
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    shutil.rmtree(tmp_path, ignore_errors=True)
