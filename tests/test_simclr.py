"""SimCLR: NT-Xent loss, DDP negatives, `mritumor pretrain` checkpoint and --resume,
encoder transfer, --pretrained without weights, and `mritumor evaluate-ssl`."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mritumor.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from mritumor.cli import main
from mritumor.data.acquire.synthetic import write_synthetic_dataset
from mritumor.data.loading.splits import sample_labelled_patients
from mritumor.losses import nt_xent_loss
from mritumor.models.backbones import build_encoder, encoder_from_config
from mritumor.models.simclr import SimCLRModel, extract_encoder_state
from mritumor.ssl_eval import load_encoder, probe_scores
from mritumor.tasks.ssl import CHECKPOINT_KEYS, METADATA_KEYS, FixedViews

SMALL = [
    "--encoder",
    "small_cnn",
    "--image_size",
    "32",
    "--batch_size",
    "8",
    "--accelerator",
    "cpu",
]


# --------------------------------------------------------------------------- loss


def hand_nt_xent(z1, z2, temperature: float) -> float:
    """The NT-Xent formula written out with loops over plain Python floats."""
    views = [list(map(float, v)) for v in list(z1) + list(z2)]
    views = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in views]
    n = len(z1)

    def sim(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True)) / temperature

    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        numerator = math.exp(sim(views[i], views[positive]))
        denominator = sum(math.exp(sim(views[i], views[k])) for k in range(2 * n) if k != i)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


def test_loss_closed_form_on_orthogonal_views():
    # Views e1, e2 | e1, e2 at τ = 1: each anchor sees its positive (cos 1) and two orthogonal
    # negatives (cos 0), so every term is -log(e / (e + 2)).
    z = torch.eye(2)
    assert nt_xent_loss(z, z.clone(), temperature=1.0).item() == pytest.approx(
        math.log(1 + 2 / math.e), abs=1e-6
    )


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_loss_equals_hand_computed_value(temperature):
    generator = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    expected = hand_nt_xent(z1.tolist(), z2.tolist(), temperature)
    assert nt_xent_loss(z1, z2, temperature).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("n", "temperature"), [(1, 0.5), (5, 0.5), (16, 0.1), (7, 1.0)])
def test_loss_agrees_with_monai(n, temperature):
    from monai.losses import ContrastiveLoss

    generator = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 8, generator=generator), torch.randn(n, 8, generator=generator)
    expected = ContrastiveLoss(temperature=temperature)(z1, z2)
    assert nt_xent_loss(z1, z2, temperature).item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_rejects_bad_input():
    with pytest.raises(ValueError):
        nt_xent_loss(torch.ones(2, 3), torch.ones(2, 3), temperature=0)
    with pytest.raises(ValueError):
        nt_xent_loss(torch.ones(2, 3), torch.ones(3, 3))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Run as `python -c` in each process (like torchrun would), so a process imports only torch and
# the loss: spawning the test module itself would import Lightning, scikit-learn, ... (~20 s).
DDP_WORKER = """
import sys
from pathlib import Path
import torch, torch.distributed as dist
from mritumor.losses import nt_xent_loss

rank, world, port, out = int(sys.argv[1]), 2, sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
generator = torch.Generator().manual_seed(0)
z1, z2 = torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator)
block = slice(rank * 4, (rank + 1) * 4)  # each process holds half of the pairs
a, b = z1[block].clone().requires_grad_(), z2[block].clone().requires_grad_()
loss = nt_xent_loss(a, b, 0.5)
loss.backward()
local_only = nt_xent_loss(a.detach(), b.detach(), 0.5, gather=False)
result = {"loss": loss.detach(), "local_only": local_only, "grad_a": a.grad, "grad_b": b.grad}
torch.save(result, Path(out) / f"rank{rank}.pt")
dist.destroy_process_group()
"""


def test_ddp_gathers_negatives_from_both_processes(tmp_path: Path):
    """Two gloo processes, each with half of 8 pairs: the mean of their losses is the
    single-process loss on all 8 pairs, so each process's denominators held the other's views;
    and the gradient flowing back into each half is that of the whole batch."""
    port = str(_free_port())
    processes = [
        subprocess.Popen([sys.executable, "-c", DDP_WORKER, str(rank), port, str(tmp_path)])
        for rank in range(2)
    ]
    assert [process.wait(timeout=120) for process in processes] == [0, 0]
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(8, 5, generator=generator).requires_grad_()
    z2 = torch.randn(8, 5, generator=generator).requires_grad_()
    full = nt_xent_loss(z1, z2, 0.5)
    full.backward()
    mean_loss = (results[0]["loss"] + results[1]["loss"]) / 2
    assert mean_loss.item() == pytest.approx(full.item(), rel=1e-6)
    for rank, result in enumerate(results):
        block = slice(rank * 4, (rank + 1) * 4)
        # Without gathering a process only sees its own 4 pairs: a different loss.
        assert result["local_only"].item() == pytest.approx(
            nt_xent_loss(z1[block].detach(), z2[block].detach(), 0.5).item(), rel=1e-6
        )
        assert abs(result["local_only"].item() - result["loss"].item()) > 1e-3
        # DDP averages gradients over 2 processes: local grad = 2 × grad of the full loss.
        torch.testing.assert_close(result["grad_a"], 2 * z1.grad[block])
        torch.testing.assert_close(result["grad_b"], 2 * z2.grad[block])


# --------------------------------------------------------------------------- pretrain


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ssl") / "data"
    return write_synthetic_dataset(root, patients_per_class=3, slices_per_patient=4, image_size=32)


@pytest.fixture(scope="module")
def run(data_root: Path, tmp_path_factory) -> Path:
    """One epoch of `mritumor pretrain` on 15 synthetic patients."""
    outdir = tmp_path_factory.mktemp("ssl") / "run"
    argv = ["-q", "pretrain", "--data-root", str(data_root), "--outdir", str(outdir)]
    assert main([*argv, *SMALL, "--epochs", "1", "--projection_dim", "16"]) == 0
    return outdir


def val_losses(outdir: Path) -> pd.Series:
    """Validation loss per epoch (0-based) over all logger versions (a resume adds one)."""
    frames = [pd.read_csv(p) for p in sorted(outdir.glob("logs/version_*/metrics.csv"))]
    table = pd.concat(frames).dropna(subset=["val_loss"])
    return table.set_index("epoch")["val_loss"]


def test_checkpoint_has_exactly_the_documented_keys(run: Path):
    payload = load_checkpoint(run / "simclr_pretrain.pt")  # weights_only: plain types only
    assert set(payload) == {"format", "simclr_state", "encoder_config", "metadata"}
    assert set(payload) == set(CHECKPOINT_KEYS)  # the documented tuple says the same
    assert payload["encoder_config"] == {
        "name": "small_cnn",
        "in_channels": 1,
        "image_size": 32,
        "feature_dim": 256,
        "input_normalisation": "none",
    }
    assert set(payload["metadata"]) == set(METADATA_KEYS) == {
        "epochs_run", "epochs_requested", "completed", "best_epoch", "best_val_loss", "data",
        "split", "preprocessing", "training", "date", "versions", "commit", "machine",
    }  # fmt: skip
    state = payload["simclr_state"]
    assert {key.split(".")[0] for key in state} == {"encoder", "projection"}
    assert state["projection.2.weight"].shape == (16, 256)  # --projection_dim 16

    meta = payload["metadata"]
    assert meta["epochs_run"] == 1 and meta["completed"] is True and meta["best_epoch"] == 1
    assert meta["best_val_loss"] == pytest.approx(val_losses(run).min())
    assert meta["training"]["temperature"] == 0.5 and meta["training"]["world_size"] == 1
    assert meta["data"]["source"] == "folder" and meta["versions"]["torch"] == torch.__version__
    split = meta["split"]
    assert split == json.loads((run / "split.json").read_text())
    parts = [set(split[p]) for p in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    # Test patients are left out: 4 slices per patient.
    assert meta["data"]["train_slices"] == 4 * len(parts[0])
    assert meta["data"]["val_slices"] == 4 * len(parts[1])
    config = (run / "config.yaml").read_text()
    assert "temperature: 0.5" in config and "encoder: small_cnn" in config
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_encoder_weights_give_identical_features_in_the_supervised_backbone(run: Path):
    payload = load_checkpoint(run / "simclr_pretrain.pt")
    config = payload["encoder_config"]
    simclr = SimCLRModel(encoder_from_config(config), projection_dim=16)
    simclr.load_state_dict(payload["simclr_state"])  # strict: the state is complete
    backbone = build_encoder(config["name"], config["in_channels"], config["image_size"])
    backbone.load_state_dict(extract_encoder_state(payload["simclr_state"]))  # strict
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = simclr.eval().encoder(images)
        assert torch.equal(backbone.eval()(images), expected)
        assert torch.equal(load_encoder(run / "simclr_pretrain.pt")(images), expected)
        fresh = build_encoder(config["name"], config["in_channels"], config["image_size"])
        assert not torch.allclose(fresh.eval()(images), expected)  # the weights did matter


def test_load_encoder_names_missing_keys(run: Path, tmp_path: Path):
    payload = load_checkpoint(run / "simclr_pretrain.pt")
    del payload["format"], payload["simclr_state"]["encoder.body.0.weight"]
    broken = save_checkpoint(payload, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="body.0.weight"):
        load_encoder(broken)
    with pytest.raises(ValueError, match="no encoder"):
        extract_encoder_state({"projection.0.weight": torch.ones(1)})


def test_resume_continues_from_the_saved_epoch(run: Path, data_root: Path, tmp_path: Path):
    outdir = tmp_path / "resumed"
    shutil.copytree(run, outdir)
    before = load_checkpoint(outdir / "simclr_pretrain.pt")
    argv = ["-q", "pretrain", "--data_root", str(data_root), "--outdir", str(outdir)]
    assert main([*argv, *SMALL, "--epochs", "2", "--projection_dim", "16", "--resume"]) == 0

    versions = sorted(outdir.glob("logs/version_*/metrics.csv"))
    assert len(versions) == 2
    second = pd.read_csv(versions[1])
    assert set(second["epoch"]) == {1}  # only epoch 2 ran: epoch 1 came from last.ckpt
    assert second["step"].min() > pd.read_csv(versions[0])["step"].max()
    losses = val_losses(outdir)
    meta = load_checkpoint(outdir / "simclr_pretrain.pt")["metadata"]
    assert meta["epochs_run"] == 2 and meta["completed"] is True
    assert meta["best_val_loss"] == pytest.approx(losses.min())
    assert meta["best_epoch"] == int(losses.idxmin()) + 1
    # The file holds the best epoch's weights: unchanged unless epoch 2 was better.
    after = load_checkpoint(outdir / "simclr_pretrain.pt")["simclr_state"]
    unchanged = all(torch.equal(after[k], before["simclr_state"][k]) for k in after)
    assert unchanged == (meta["best_epoch"] == 1)


def test_resume_without_an_earlier_run_fails_cleanly(data_root: Path, tmp_path: Path, capsys):
    argv = ["-q", "pretrain", "--data_root", str(data_root), "--outdir", str(tmp_path / "none")]
    assert main([*argv, *SMALL, "--resume"]) == 2
    assert "last.ckpt does not exist" in capsys.readouterr().err


def test_pretrained_without_cached_weights_says_which_file_goes_where(
    data_root: Path, tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    outdir = tmp_path / "out"
    argv = ["-q", "pretrain", "--data_root", str(data_root), "--outdir", str(outdir)]
    assert main([*argv, "--encoder", "mobilenet_v2", "--pretrained", "--image_size", "32"]) == 2
    error = capsys.readouterr().err
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    assert "mobilenet_v2-b0353104.pth" in error and str(expected) in error
    assert not (outdir / "split.json").exists()  # failed before reading the data
    assert not expected.exists()  # and downloaded nothing


def test_help_explains_the_seed_flags_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in [
        ("--encoder", "mobilenet_v2"),
        ("--projection_dim", "128"),
        ("--temperature", "0.5"),
        ("--epochs", "50"),
        ("--batch_size", "64"),
        ("--lr", "0.001"),
        ("--image_size", "224"),
        ("--positive_pairs", "augment"),
    ]:
        assert f"{flag} " in text and f"(default: {default})" in text, flag
    for flag in ("--data_root", "--outdir", "--pretrained", "--devices", "--num_nodes", "--resume"):
        assert flag in text


def test_validation_views_are_fixed_and_same_patient_pairs_are_passed_on(
    run: Path, data_root: Path
):
    from mritumor.config import PretrainConfig
    from mritumor.data.loading.prepare import prepare_data_for
    from mritumor.tasks.ssl import make_loaders

    config = PretrainConfig.from_flags(
        {"image_size": 32, "positive_pairs": "same_patient", "seed": 0, "num_workers": 0}
        | {"batch_size": 8, "split_file": str(run / "split.json"), "data_root": str(data_root)}
    )
    data = prepare_data_for(config.data, progress=False)
    train, val = make_loaders(data, config)
    assert train.dataset.positive_pairs == "same_patient" and train.drop_last
    assert isinstance(val.dataset, FixedViews) and not val.drop_last
    first, again, other = val.dataset[0], val.dataset[0], val.dataset[1]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[0], other[0])


# --------------------------------------------------------------------------- evaluate-ssl


def test_sample_labelled_patients_is_stratified_and_seeded():
    types = {f"a{i}": "a" for i in range(8)} | {f"b{i}": "b" for i in range(4)} | {"c0": "c"}
    chosen = sample_labelled_patients(types, 0.25, seed=3)
    assert sorted(types[p] for p in chosen) == ["a", "a", "b", "c"]  # ≥ 1 per type
    assert chosen == sample_labelled_patients(types, 0.25, seed=3)
    assert sample_labelled_patients(types, 1.0) == sorted(types)
    with pytest.raises(ValueError):
        sample_labelled_patients(types, 0.0)


def test_probes_separate_separable_features():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(3, 1, (20, 6)), rng.normal(-3, 1, (20, 6))])
    y = np.array(["a"] * 20 + ["b"] * 20)
    scores = probe_scores(x[::2], y[::2], x[1::2], y[1::2], knn_k=5)
    assert scores["linear_probe"]["accuracy"] == 1.0 and scores["knn"]["accuracy"] == 1.0
    flipped = probe_scores(x[::2], y[::2][::-1], x[1::2], y[1::2], knn_k=5)
    assert flipped["linear_probe"]["accuracy"] == 0.0  # labels swapped: every answer wrong


def test_balanced_accuracy_weights_each_class_equally():
    # Test set: three "a" points near the a cluster, one "b" point also near it. Both probes
    # answer "a" for all four: accuracy 3/4, balanced accuracy (1 + 0) / 2 = 1/2.
    rng = np.random.default_rng(1)
    train_x = np.concatenate([rng.normal(3, 0.3, (10, 4)), rng.normal(-3, 0.3, (10, 4))])
    train_y = np.array(["a"] * 10 + ["b"] * 10)
    test_x = rng.normal(3, 0.3, (4, 4))
    test_y = np.array(["a", "a", "a", "b"])
    scores = probe_scores(train_x, train_y, test_x, test_y, knn_k=3)
    for probe in ("linear_probe", "knn"):
        assert scores[probe]["accuracy"] == pytest.approx(0.75)
        assert scores[probe]["balanced_accuracy"] == pytest.approx(0.5)
    assert scores["knn"]["k"] == 3


def cosine_knn_predict(train_x, train_y, test_x, k: int) -> np.ndarray:
    """Majority vote of the k most cosine-similar training rows; a tie goes to the first class
    in sorted order (what scikit-learn's KNeighborsClassifier does)."""
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    nearest = np.argsort(-(unit(test_x) @ unit(train_x).T), axis=1, kind="stable")[:, :k]
    classes = np.unique(train_y)
    votes = (train_y[nearest][..., None] == classes).sum(axis=1)
    return classes[votes.argmax(axis=1)]


def accuracies(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Accuracy and balanced accuracy (mean per-class recall), by hand."""
    recalls = [np.mean(predicted[truth == c] == c) for c in np.unique(truth)]
    return {"accuracy": np.mean(predicted == truth), "balanced_accuracy": np.mean(recalls)}


def test_evaluate_ssl_writes_metrics_and_plot_with_random_baseline(
    run: Path, data_root: Path, tmp_path: Path, capsys, monkeypatch
):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mritumor import ssl_eval
    from mritumor.ssl_eval import evaluate_ssl

    probed = []  # the features and labels each evaluation handed to the probes

    def spy(train_x, train_y, test_x, test_y, *args, **kwargs):
        probed.append((train_x, train_y, test_x, test_y))
        return probe_scores(train_x, train_y, test_x, test_y, *args, **kwargs)

    monkeypatch.setattr(ssl_eval, "probe_scores", spy)
    out = tmp_path / "eval"
    argv = ["-q", "evaluate-ssl", "--ckpt", str(run / "simclr_pretrain.pt")]
    assert main([*argv, "--data_root", str(data_root), "--outdir", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "ssl_eval_metrics.json").read_text())
    assert printed["linear_probe_accuracy"] == metrics["linear_probe"]["accuracy"]
    assert (out / "ssl_embedding_pca.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The checkpoint's split is used: the probes are tested on patients pretraining never saw.
    split = load_checkpoint(run / "simclr_pretrain.pt")["metadata"]["split"]
    assert metrics["split"]["source"] == "checkpoint"
    assert json.loads((out / "split.json").read_text())["test"] == split["test"]
    assert metrics["patients"]["test"] == len(split["test"])
    assert metrics["slices"] == {
        "train": 4 * (len(split["train"]) + len(split["val"])),
        "test": 4 * len(split["test"]),
    }

    baseline = evaluate_ssl(
        "random",
        data_root,
        tmp_path / "random",
        encoder_name="small_cnn",
        image_size=32,
        label_fraction=0.5,
        seed=1,
        progress=False,
    )
    assert baseline["encoder_config"]["name"] == "small_cnn"
    assert baseline["split"]["source"] == "new"
    assert len(metrics["classes"]) <= 3 <= baseline["patients"]["labelled"]
    assert baseline["patients"]["labelled"] < baseline["patients"]["available_for_training"]
    assert baseline["slices"]["train"] == 4 * baseline["patients"]["labelled"]
    assert len(probed) == 2
    test_types = {p: p.split("-")[1] for p in split["test"]}  # syn-<type>-g<grade>-p<n>
    for result, (train_x, train_y, test_x, test_y) in zip((metrics, baseline), probed, strict=True):
        assert len(train_y) == result["slices"]["train"] and len(test_y) == result["slices"]["test"]
        assert train_x.shape[1] == test_x.shape[1] == result["encoder_config"]["feature_dim"]
        # the probes' scores, recomputed: the linear probe refitted, the k-NN vote by hand
        linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=0))
        expected = {
            "linear_probe": accuracies(test_y, linear.fit(train_x, train_y).predict(test_x)),
            "knn": accuracies(test_y, cosine_knn_predict(train_x, train_y, test_x, k=5)),
        }
        for probe in ("linear_probe", "knn"):
            for name in ("accuracy", "balanced_accuracy"):
                assert result[probe][name] == pytest.approx(expected[probe][name]), (probe, name)
        assert result["knn"]["k"] == 5
    # the checkpoint's test patients' slices, 4 each, labelled with their own type
    test_y = probed[0][3]
    assert sorted(test_y) == sorted(t for t in test_types.values() for _ in range(4))
    assert (tmp_path / "random" / "ssl_embedding_pca.png").is_file()


# --------------------------------------------------------------------------- Lightning DDP


@pytest.mark.slow
def test_two_process_ddp_pretrain_on_cpu(data_root: Path, tmp_path: Path):
    """`--devices 2 --accelerator cpu`: Lightning launches a second process (gloo)."""
    outdir = tmp_path / "ddp"
    command = [sys.executable, "-m", "mritumor.cli", "-q", "pretrain", "--data_root",
               str(data_root), "--outdir", str(outdir), "--encoder", "small_cnn",
               "--image_size", "32", "--batch_size", "4", "--epochs", "1",
               "--accelerator", "cpu", "--devices", "2"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = load_checkpoint(outdir / "simclr_pretrain.pt")["metadata"]
    assert meta["training"]["world_size"] == 2 and meta["epochs_run"] == 1
    assert meta["best_val_loss"] == pytest.approx(val_losses(outdir).min())
