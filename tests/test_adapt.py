"""mritumor adapt: AdaBN changes only BatchNorm statistics and sets them to the site's (checked
against statistics computed here), TENT only BatchNorm scales, shifts and statistics, the
adapted model classifies a shifted site clearly better (also on the patients adaptation never
saw, through evaluate --split_file), the labelled draw and its split, the record, refusals.

The two sites are drawn here: a head disc with a textured tissue and a round lesion whose
brightness above the tissue is the tumour type (+0.15, +0.35, +0.55). Site B is raised to the
power 3 after acquisition: per-slice percentile scaling removes gains and offsets but not a
power law, which squeezes the tissue towards the background and stretches the lesions, so the
network trained on site A sees contrasts it never saw (it calls every site-B slice one type)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch.utils.data import DataLoader

from mritumor.checkpoints import load_checkpoint, save_checkpoint
from mritumor.cli import main
from mritumor.config import MultitaskConfig
from mritumor.data.loading.cache import Preprocessing, SliceCache
from mritumor.data.loading.datasets import SliceDataset
from mritumor.data.loading.labels import LabelSpace
from mritumor.data.loading.splits import Split
from mritumor.data.reading.readers import read_catalog
from mritumor.errors import MritumorError
from mritumor.inference.refit import slice_uncertainty
from mritumor.models.loading import load_model
from mritumor.models.multitask import build_multitask_model
from mritumor.tasks.adapt import AdaptConfig, adapt_checkpoint, check_site_images
from mritumor.tasks.multitask import checkpoint_payload

SIZE = 32
TYPES = ("astrocytoma", "meningioma", "pituitary")
LESION = (0.15, 0.35, 0.55)  # brightness of the lesion above the tissue, by type


def phantom(rng: np.random.Generator, kind: int, gamma: float, size: int = SIZE):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre, radius = size / 2 + rng.uniform(-1.5, 1.5, 2), size * rng.uniform(0.38, 0.44)
    head = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2
    texture = gaussian_filter(rng.standard_normal((size, size)), 2) * 0.25
    image = np.where(head, 0.45 + texture, 0.02)
    angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(0, radius * 0.75 - 4)
    lesion = (yy - centre[0] - distance * np.sin(angle)) ** 2 + (
        xx - centre[1] - distance * np.cos(angle)
    ) ** 2 < rng.uniform(3.0, 4.5) ** 2
    image = gaussian_filter(image + LESION[kind] * lesion, 0.6)
    image = np.clip(image + rng.standard_normal(image.shape) * 0.03, 0, 1) ** gamma
    return image, lesion


def write_site(root: Path, patients: int, prefix: str, gamma: float = 1.0, slices: int = 3):
    for kind, tumour_type in enumerate(TYPES):
        for p in range(patients):
            rng = np.random.default_rng([len(prefix), kind, p])
            folder = root / tumour_type / f"{prefix}-{tumour_type}-{p:02d}"
            folder.mkdir(parents=True)
            for s in range(slices):
                image, mask = phantom(rng, kind, gamma)
                Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / f"s{s}.png")
                Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"s{s}_mask.png")
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread (torch and BLAS): these 32-px batches and small covariances gain nothing
    from a second, and on two shared cores the waiting threads made this file 10× slower."""
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("adapt")
    return SimpleNamespace(
        base=base,
        a=write_site(base / "site_a", 8, "a"),
        b=write_site(base / "site_b", 6, "bb", gamma=3.0),
    )


@pytest.fixture(scope="module")
def source(sites) -> Path:
    """A variant-D small_cnn trained on site A (6 patients per type; 2 validate), in the
    format of train-multitask (its checkpoint_payload) with its uncertainty state."""
    cache = SliceCache.build(read_catalog(sites.a), Preprocessing(image_size=SIZE), progress=False)
    labels = LabelSpace.from_table(cache.catalog.table)
    patients = cache.catalog.table["patient_id"]
    split = Split(
        train=[p for p in cache.catalog.patients if int(p[-2:]) < 6],
        val=[p for p in cache.catalog.patients if int(p[-2:]) >= 6],
        test=[],
        strategy="test",
    )

    def loader(part, shuffle=False, batch_size=16):
        rows = np.flatnonzero(patients.isin(part).to_numpy())
        dataset = SliceDataset(cache, rows, labels)
        return DataLoader(dataset, batch_size, shuffle, generator=order if shuffle else None)

    torch.manual_seed(0)
    order = torch.Generator().manual_seed(0)
    model = build_multitask_model("D", 3, "small_cnn", 1, SIZE, hidden_dim=32, decoder="fcn")
    optimiser = torch.optim.AdamW(model.parameters(), 1e-2)
    for _ in range(12):
        model.train()
        for batch in loader(split.train, shuffle=True):
            logits = model(batch["image"])["class_logits"]
            loss = torch.nn.functional.cross_entropy(logits, batch["tumor_type"])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    # BatchNorm's running averages lag the weights after so few steps: set to the training
    # slices' statistics (one batch of all of them, cumulative average), as a longer run has
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        (everything,) = loader(split.train, batch_size=len(split.train) * 3)
        model(everything["image"])
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 0.1
    model.eval()
    config = MultitaskConfig(backbone="small_cnn", hidden_dim=32, decoder="fcn")
    payload = checkpoint_payload(model, "D", labels, SimpleNamespace(cache=cache, split=split), config)  # fmt: skip
    payload["uncertainty"] = slice_uncertainty(
        model, loader(split.train), loader(split.val), patients.to_numpy(), 1.0, 0.9
    )
    return save_checkpoint(payload, sites.base / "source" / "best.pt")


def adapt(source: Path, site: Path, outdir: Path, *flags: str) -> Path:
    argv = ["-q", "adapt", "--checkpoint", str(source), "--site_root", str(site),
            "--outdir", str(outdir), "--device", "cpu", *flags]  # fmt: skip
    assert main(argv) == 0
    return outdir


@pytest.fixture(scope="module")
def adabn_run(source, sites) -> Path:
    return adapt(source, sites.b, sites.base / "adabn")


@pytest.fixture(scope="module")
def labelled_run(source, sites) -> Path:
    return adapt(source, sites.b, sites.base / "labelled", "--labelled_per_class", "3",
                 "--epochs", "6", "--lr", "0.01", "--conformal_mondrian", "--seed", "3")  # fmt: skip


def site_images(checkpoint: Path, site: Path, patients=None):
    """The site's slices (the checkpoint's preprocessing) and their type indices."""
    loaded = load_model(checkpoint)
    cache = SliceCache.build(read_catalog(site), loaded.preprocessing, progress=False)
    table = cache.catalog.table
    keep = table["patient_id"].isin(patients if patients is not None else table["patient_id"])
    images = torch.from_numpy(np.asarray(cache.images, dtype=np.float32)[keep.to_numpy()])
    types = torch.tensor([loaded.labels.type_index(t) for t in table["tumor_type"][keep]])
    return loaded, images, types


@torch.no_grad()
def accuracy(checkpoint: Path, site: Path, patients=None) -> float:
    loaded, images, types = site_images(checkpoint, site, patients)
    predicted = loaded.model(images)["class_logits"].argmax(1)
    return float((predicted == types).double().mean())


def batchnorm_keys(state: dict, model) -> tuple[set, set]:
    """State-dict names of the BatchNorm statistics and of their scales and shifts."""
    statistics, affine = set(), set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            statistics |= {f"{name}.{k}" for k in ("running_mean", "running_var", "num_batches_tracked")}  # fmt: skip
            affine |= {f"{name}.weight", f"{name}.bias"}
    assert statistics <= set(state) and affine <= set(state)
    return statistics, affine


def first_layer_site_statistics(source: Path, site: Path):
    """Mean and unbiased variance per channel of the first convolution's output over every
    pixel of every site slice: what the first BatchNorm sees (its input is not normalised)."""
    loaded, images, _ = site_images(source, site)
    with torch.no_grad():
        features = loaded.model.encoder.body[0](images)  # the conv before body[1], a BatchNorm
    flat = features.transpose(0, 1).reshape(features.shape[1], -1)
    return flat.mean(1), torch.var(flat, dim=1, unbiased=True)


def test_adabn_changes_only_the_batchnorm_statistics_and_sets_the_site_s(source, sites, adabn_run):
    before, after = load_checkpoint(source), load_checkpoint(adabn_run / "best.pt")
    old, new = before["model_state"], after["model_state"]
    statistics, _ = batchnorm_keys(old, load_model(source).model)
    assert set(old) == set(new)
    for key in set(old) - statistics:
        assert torch.equal(old[key], new[key]), key
    means = [k for k in statistics if k.endswith("running_mean")]
    assert all(not torch.equal(old[k], new[k]) for k in means)
    mean, variance = first_layer_site_statistics(source, sites.b)
    assert isinstance(load_model(source).model.encoder.body[1], torch.nn.BatchNorm2d)
    torch.testing.assert_close(new["encoder.body.1.running_mean"], mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(new["encoder.body.1.running_var"], variance, rtol=1e-4, atol=1e-5)
    # the old statistics were not the site's: the test can tell them apart
    assert not torch.allclose(old["encoder.body.1.running_var"], variance, rtol=1e-2)
    record = after["adaptation"]
    assert record["changed_tensors"]["counts"] == {"batchnorm_statistics": len(means) * 3}
    assert record["unlabelled"]["images"] == 3 * 6 * 3
    # no labels: the source's detector and sets are kept, and the record and output say so
    assert torch.equal(after["uncertainty"]["ood"]["precision"][0], before["uncertainty"]["ood"]["precision"][0])  # fmt: skip
    assert any("NOT re-fitted" in note for note in record["notes"])
    assert not record["uncertainty_refitted"] and after["temperature"] == before["temperature"]


def test_the_adapted_checkpoint_loads_safely_and_records_its_source(source, adabn_run):
    path = adabn_run / "best.pt"
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain values only
    record = raw["adaptation"]
    assert record["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert record["source_checkpoint"] == str(source.absolute())
    assert record["settings"]["unlabelled"] == "adabn" and record["finetune_patients"] == []
    loaded = load_model(path)  # what predict, evaluate, serve and export load
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, raw["model_state"][key]), key
    split = json.loads((adabn_run / "site_split.json").read_text())
    assert split["train"] == split["val"] == [] and len(split["test"]) == 18
    report = json.loads((adabn_run / "adapt_report.json").read_text())
    assert report["source_sha256"] == record["source_sha256"]


def test_adaptation_classifies_the_shifted_site_clearly_better(source, sites, adabn_run):
    before, after = accuracy(source, sites.b), accuracy(adabn_run / "best.pt", sites.b)
    assert accuracy(source, sites.a) >= 0.8  # the source model does know site A
    assert after >= before + 0.2, (before, after)


def test_labelled_adaptation_improves_the_untouched_patients_and_evaluate_scores_them(
    source, sites, labelled_run, tmp_path
):
    from mritumor.inference.evaluate import evaluate_checkpoint

    split = json.loads((labelled_run / "site_split.json").read_text())
    untouched = split["test"]
    before = accuracy(source, sites.b, untouched)
    after = accuracy(labelled_run / "best.pt", sites.b, untouched)
    assert after >= before + 0.2, (before, after)
    result = evaluate_checkpoint(
        labelled_run / "best.pt", sites.b, tmp_path / "eval", labelled_run / "site_split.json",
        n_boot=5, n_overlays=0, progress=False, engine="torch",
    )  # fmt: skip
    assert result["evaluation"]["n_patients"] == len(untouched) == 9
    assert result["metrics"]["tumor_type_accuracy"]["value"] == pytest.approx(after, abs=1e-9)


def test_the_labelled_draw_and_its_split(sites, labelled_run):
    split = json.loads((labelled_run / "site_split.json").read_text())
    fit, held, test = set(split["train"]), set(split["val"]), set(split["test"])
    everyone = {p.name for p in sites.b.glob("*/*")}
    assert fit | held | test == everyone and len(everyone) == 18
    assert not fit & held and not fit & test and not held & test
    type_of = {p.name: p.parent.name for p in sites.b.glob("*/*")}
    for tumour_type in TYPES:  # 3 per type: round(0.4 * 3) = 1 held out, 2 fine-tune
        assert sum(type_of[p] == tumour_type for p in fit) == 2
        assert sum(type_of[p] == tumour_type for p in held) == 1
    checkpoint = load_checkpoint(labelled_run / "best.pt")
    record = checkpoint["adaptation"]
    assert record["finetune_patients"] == split["train"] and record["heldout_patients"] == split["val"]  # fmt: skip
    assert checkpoint["split"] == {k: split[k] for k in ("train", "val", "test", "strategy")}
    # head fine-tuning: besides the BatchNorm statistics only the classification layers changed
    changed = record["changed_tensors"]
    assert changed["counts"]["other"] == 4  # cls_hidden.1 and cls_out, weight and bias each
    others = [n for n in changed["names"] if "running_" not in n and "num_batches" not in n]
    assert sorted(others) == ["cls_hidden.1.bias", "cls_hidden.1.weight", "cls_out.bias", "cls_out.weight"]  # fmt: skip
    # the temperature minimises the held-out NLL: not above the NLL at the source's temperature
    heldout = record["heldout"]
    assert heldout["after_temperature"]["nll"] <= heldout["after_finetune"]["nll"] + 1e-9
    assert heldout["source"]["slices"] == 3 * 3
    # the sets were re-fitted on the held-out slices, one score per slice and per class
    state = checkpoint["uncertainty"]
    assert record["uncertainty_refitted"] and state["conformal"]["mondrian"]
    assert len(state["conformal"]["scores"]) == 9
    assert [len(s) for s in state["conformal"]["class_scores"]] == [3, 3, 3]
    assert checkpoint["temperature"] == record["temperature"]["adapted"]


def test_tent_changes_only_batchnorm_scales_shifts_and_statistics(source, sites):
    outdir = adapt(source, sites.b, sites.base / "tent", "--unlabelled", "tent",
                   "--tent_steps", "2", "--lr", "0.01")  # fmt: skip
    old = load_checkpoint(source)["model_state"]
    after = load_checkpoint(outdir / "best.pt")
    new = after["model_state"]
    statistics, affine = batchnorm_keys(old, load_model(source).model)
    for key in set(old) - statistics - affine:
        assert torch.equal(old[key], new[key]), key
    assert any(not torch.equal(old[k], new[k]) for k in affine)
    # the first convolution is unchanged, so the first BatchNorm's statistics are AdaBN's
    mean, variance = first_layer_site_statistics(source, sites.b)
    torch.testing.assert_close(new["encoder.body.1.running_mean"], mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(new["encoder.body.1.running_var"], variance, rtol=1e-4, atol=1e-5)
    assert after["adaptation"]["unlabelled"]["tent"]["steps"] == 2


def refusal(source: Path, site: Path, outdir: Path, **options) -> str:
    config = AdaptConfig(checkpoint=str(source), site_root=str(site), outdir=str(outdir),
                         quiet=True, **options)  # fmt: skip
    with pytest.raises(MritumorError) as error:
        adapt_checkpoint(config)
    return str(error.value)


def test_refusals(source, sites, tmp_path, old_format_checkpoints, capsys):
    rgb = tmp_path / "rgb" / "meningioma" / "p0"
    rgb.mkdir(parents=True)
    colours = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(colours).save(rgb / "s0.png")  # three different channels
    message = refusal(source, tmp_path / "rgb", tmp_path / "o1")
    assert "channels differ from the model's 1" in message and "p0 (3 channels)" in message

    tiny = tmp_path / "tiny" / "meningioma" / "p0"
    tiny.mkdir(parents=True)
    Image.fromarray(np.full((12, 12), 100, np.uint8)).save(tiny / "s0.png")
    message = refusal(source, tmp_path / "tiny", tmp_path / "o2")
    assert "smaller than half the model's input size 32" in message and "12×12" in message

    hierarchical = old_format_checkpoints["hierarchical"][0]
    message = refusal(hierarchical, sites.b, tmp_path / "o3")
    assert "hierarchical" in message and "adapt needs a train-multitask checkpoint" in message

    message = refusal(source, sites.b, tmp_path / "o4", labelled_per_class=7)
    assert "--labelled_per_class 7 is more than the site has of astrocytoma (6)" in message

    other = tmp_path / "other" / "no_tumour" / "p0"
    other.mkdir(parents=True)
    Image.fromarray(np.full((SIZE, SIZE), 100, np.uint8)).save(other / "s0.png")
    message = refusal(source, tmp_path / "other", tmp_path / "o5", labelled_per_class=2)
    assert "no site patient has a tumour type the model knows" in message

    message = refusal(source, sites.b, source.parent)
    assert "would overwrite --checkpoint" in message
    message = refusal(source, sites.b, tmp_path / "o7", finetune="head")
    assert "--finetune needs labelled patients" in message
    message = refusal(source, sites.b, tmp_path / "o8", unlabelled="none")
    assert "nothing to adapt" in message

    (tmp_path / "empty" / "meningioma" / "p0").mkdir(parents=True)  # a patient, no image
    capsys.readouterr()
    argv = ["adapt", "--checkpoint", str(source), "--site_root", str(tmp_path / "empty"),
            "--outdir", str(tmp_path / "o6")]  # fmt: skip
    assert main(argv) == 2
    assert "no usable slices" in capsys.readouterr().err


def test_grey_stored_as_identical_rgb_channels_is_accepted(tmp_path):
    folder = tmp_path / "site" / "meningioma" / "p0"
    folder.mkdir(parents=True)
    grey = np.random.default_rng(1).random((SIZE, SIZE)).astype(np.float32)
    np.save(folder / "s0.npy", np.stack([grey] * 3, axis=-1))  # (H, W, 3), channels equal
    prep = Preprocessing(image_size=SIZE, channels=1)
    found = check_site_images(read_catalog(tmp_path / "site"), prep, "site")
    assert found["grey_stored_as_rgb_accepted"] == 1 and found["probed_slices"] == 1
    np.save(folder / "s0.npy", np.stack([grey, grey, 1 - grey], axis=-1))
    with pytest.raises(MritumorError, match="channels differ"):
        check_site_images(read_catalog(tmp_path / "site"), prep, "site")


def test_the_last_stage_is_the_coarsest_block_with_weights():
    """small_cnn: the last conv + BatchNorm (+ ReLU, pooling) at stride 8, before the final
    pooling; resnet18: layer4 (the body's last module)."""
    from mritumor.tasks.adapt import last_stage

    small = build_multitask_model("B", 3, "small_cnn", 1, SIZE, hidden_dim=8)
    assert last_stage(small) == list(small.encoder.body)[12:]
    assert isinstance(small.encoder.body[12], torch.nn.Conv2d) and small.encoder.body[12].out_channels == 256  # fmt: skip
    resnet = build_multitask_model("B", 3, "resnet18", 1, SIZE, hidden_dim=8)
    assert last_stage(resnet) == [resnet.encoder.body[7]]
