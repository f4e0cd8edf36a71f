"""Reliability and security: crash and resume, atomic and safe checkpoints, determinism, and
refusing runs the machine cannot finish.

The end-to-end tests share one module-scoped set of ``train-hierarchical`` runs on a tiny
synthetic cohort (small_cnn, 32 px, CPU, one thread):

* A: uninterrupted, seed 0;
* B: the same command in a subprocess, killed with SIGKILL as soon as its first epoch's
  ``last.ckpt`` exists (so mid-way through the second epoch), then re-run with ``--resume``;
* A2: A again (determinism); C: seed 1 (another split).
"""

from __future__ import annotations

import ast
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import mritumor.checkpoints as checkpoints
from mritumor import resources
from mritumor.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    check_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from mritumor.cli import main
from mritumor.config import TrainerConfig
from mritumor.data.acquire.synthetic import write_synthetic_dataset
from mritumor.data.loading.cache import Preprocessing, SliceCache
from mritumor.data.reading import io
from mritumor.data.reading.readers import read_catalog
from mritumor.resources import ResourceError, check_free_space, check_writable
from mritumor.training import (
    AtomicCheckpointIO,
    EpochSeeding,
    LastCheckpoint,
    build_trainer,
    epoch_seed,
)

SRC = Path(__file__).resolve().parents[1] / "src"
EPOCHS = 5
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
DiskUsage = namedtuple("DiskUsage", "total used free")  # what shutil.disk_usage returns


def train_argv(data_root: Path, outdir: Path, seed: int = 0, *extra: str) -> list[str]:
    return [
        "-q",
        "train-hierarchical",
        "--data_root",
        str(data_root),
        "--outdir",
        str(outdir),
        "--backbone",
        "small_cnn",
        "--image_size",
        "32",
        "--epochs",
        str(EPOCHS),
        "--batch_size",
        "2",
        "--bag_size",
        "3",
        "--lr",
        "1e-3",
        "--test_frac",
        "0.3",
        "--n_boot",
        "20",
        "--patience",
        "0",
        "--deterministic",
        "--seed",
        str(seed),
        "--num_workers",
        "0",
        "--accelerator",
        "cpu",
        *extra,
    ]


def one_thread_env() -> dict:
    # one intra-op thread everywhere: in-process and subprocess runs do the same arithmetic
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}


@contextmanager
def one_thread():
    """One torch thread, and the process-wide flags --deterministic sets put back after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def run_in_process(argv: list[str]) -> None:
    with one_thread():
        assert main(argv) == 0


def kill_when(process: subprocess.Popen, path: Path, result: dict, timeout: float = 300) -> None:
    """SIGKILL ``process`` as soon as ``path`` exists (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.is_file():
            result["alive_at_kill"] = process.poll() is None
            process.send_signal(signal.SIGKILL)
            return
        time.sleep(0.01)
    result["alive_at_kill"] = False


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("reliability")
    data = write_synthetic_dataset(
        base / "data", patients_per_class=4, slices_per_patient=3, image_size=32, seed=0
    )
    out = {name: base / name for name in ("A", "B", "A2", "C")}
    command = [sys.executable, "-m", "mritumor.cli", *train_argv(data, out["B"], 0)]
    killed = subprocess.Popen(
        command, env=one_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    watch: dict = {}
    watcher = threading.Thread(
        target=kill_when, args=(killed, out["B"] / "checkpoints" / "last.ckpt", watch)
    )
    watcher.start()
    run_in_process(train_argv(data, out["A"], 0))  # meanwhile, on the other core
    watcher.join()
    _, stderr = killed.communicate(timeout=300)
    after_kill = {
        "finished": (out["B"] / "test_metrics.json").exists(),
        "last_ckpt_epoch": torch.load(
            out["B"] / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu"
        )["epoch"],
        "versions": sorted(p.name for p in (out["B"] / "logs").glob("version_*")),
    }
    resumed = subprocess.Popen(
        [*command, "--resume"], env=one_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    run_in_process(train_argv(data, out["A2"], 0))
    run_in_process(train_argv(data, out["C"], 1, "--epochs", "1"))
    _, resumed_err = resumed.communicate(timeout=600)
    return {
        "data": data,
        **out,
        "killed_code": killed.returncode,
        "killed_stderr": stderr.decode(errors="replace"),
        "alive_at_kill": watch.get("alive_at_kill"),
        "after_kill": after_kill,
        "resumed_code": resumed.returncode,
        "resumed_stderr": resumed_err.decode(errors="replace"),
    }


def model_state(run: Path) -> dict:
    return load_checkpoint(run / "best.pt")["model_state"]


def assert_same_run(first: Path, second: Path) -> None:
    """Bit-for-bit: the best weights, every test metric and every patient's probabilities."""
    a, b = model_state(first), model_state(second)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((first / "test_metrics.json").read_text()) == json.loads(
        (second / "test_metrics.json").read_text()
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(first / "predictions.csv"), pd.read_csv(second / "predictions.csv")
    )


# ----------------------------------------------------------------------------- crash and resume


def test_killed_run_resumes_to_the_uninterrupted_result(runs):
    assert runs["alive_at_kill"], "the run finished before it could be killed"
    assert runs["killed_code"] == -signal.SIGKILL, runs["killed_stderr"][-2000:]
    after_kill = runs["after_kill"]
    assert not after_kill["finished"] and after_kill["versions"] == ["version_0"]
    assert 0 <= after_kill["last_ckpt_epoch"] < EPOCHS - 1  # an epoch done, not all of them
    assert runs["resumed_code"] == 0, runs["resumed_stderr"][-3000:]
    resumed_log = pd.read_csv(runs["B"] / "logs" / "version_1" / "metrics.csv")
    # resumed, not restarted: the epochs up to the checkpoint's came from last.ckpt
    assert resumed_log["epoch"].min() == after_kill["last_ckpt_epoch"] + 1
    assert resumed_log["epoch"].max() == EPOCHS - 1
    assert_same_run(runs["A"], runs["B"])


def test_epoch_seeding_makes_resume_exact_and_is_what_makes_it_exact(tmp_path: Path):
    """A toy fit whose every epoch draws from the global generators (shuffling, a random
    augmentation in the dataset, dropout) under a decaying learning rate, resumed from the
    last.ckpt its first epoch left: resumed == uninterrupted with EpochSeeding, and not
    without it (so the callback, not luck, is what makes the end-to-end test pass)."""
    for seeding in (True, False):
        snapshot = tmp_path / f"epoch0-{seeding}.ckpt"
        full = fit_toy(tmp_path / f"full{seeding}", 3, seeding=seeding, snapshot=snapshot)
        resumed = fit_toy(tmp_path / f"resumed{seeding}", 3, resume=snapshot, seeding=seeding)
        assert [r[0] for r in resumed.record] == [1, 1, 1, 2, 2, 2]  # epoch 0 not re-run
        same_steps = [r for r in full.record if r[0] >= 1] == resumed.record
        same_weights = all(
            torch.equal(p, q) for p, q in zip(full.parameters(), resumed.parameters(), strict=True)
        )
        assert same_steps == same_weights == seeding, seeding


class NoisyItems(Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int):
        return torch.full((4,), i / 12) + torch.randn(4) * 0.1, torch.tensor(i)


class Toy(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1)
        )
        self.record: list = []

    def training_step(self, batch, batch_index):
        x, index = batch
        loss = (self.net(x).squeeze(1) - index / 12).pow(2).mean()
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.record.append((self.current_epoch, index.tolist(), float(loss), lr))
        return loss

    def validation_step(self, batch, batch_index):
        self.log("val_loss", self.net(batch[0]).mean())

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        return {
            "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5),
        }


class Snapshot(L.Callback):
    """Copies last.ckpt when epoch 1 starts: what a crash during epoch 1 would leave."""

    def __init__(self, source: Path, target: Path):
        self.source, self.target = source, target

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            shutil.copy(self.source, self.target)


def trainer_args(seed: int | None = 0) -> TrainerConfig:
    return TrainerConfig(
        devices="1",
        num_nodes=1,
        accelerator="cpu",
        precision="32-true",
        deterministic=True,
        quiet=True,
        seed=seed,
    )


def fit_toy(
    out: Path, epochs: int, resume: Path | None = None, seeding: bool = True, snapshot=None
) -> Toy:
    torch.manual_seed(0)
    model = Toy()
    callbacks = [LastCheckpoint(out / "ck")]
    if snapshot:
        callbacks.append(Snapshot(out / "ck" / "last.ckpt", snapshot))
    trainer = build_trainer(
        trainer_args(0 if seeding else None), out, epochs, callbacks, num_sanity_val_steps=0
    )
    loader = DataLoader(NoisyItems(), batch_size=4, shuffle=True)
    with one_thread():
        trainer.fit(model, loader, DataLoader(NoisyItems(), batch_size=6), ckpt_path=resume)
    return model


def test_every_trainer_gets_epoch_seeding_and_atomic_checkpoints(tmp_path: Path):
    trainer = build_trainer(trainer_args(7), tmp_path, 1)
    seeding = [c for c in trainer.callbacks if isinstance(c, EpochSeeding)]
    assert len(seeding) == 1 and seeding[0].seed == 7
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    seeds = {epoch_seed(0, e) for e in range(100)} | {epoch_seed(1, e) for e in range(100)}
    assert len(seeds) == 200  # no two (seed, epoch) pairs share a seed


# ----------------------------------------------------------------------------- atomic saving


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    path = save_checkpoint({"model_state": {"w": torch.arange(4.0)}}, tmp_path / "best.pt")
    return path


def assert_intact(path: Path) -> None:
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.arange(4.0))
    assert not list(path.parent.glob(".*.tmp")), "a temporary file was left behind"


def test_disk_full_while_writing_keeps_the_previous_checkpoint(previous: Path, monkeypatch):
    real_save = torch.save

    def half_then_full(obj, stream, *args, **kwargs):
        real_save(obj, stream)
        stream.seek(stream.tell() // 2)
        stream.truncate()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(CheckpointError, match=r"No space left.*previous file is intact") as caught:
        save_checkpoint({"model_state": {"w": torch.zeros(4)}}, previous)
    assert str(previous) in str(caught.value)
    monkeypatch.undo()
    assert_intact(previous)


def test_failing_rename_keeps_the_previous_checkpoint(previous: Path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.os, "replace", refuse)
    with pytest.raises(CheckpointError, match="previous file is intact"):
        save_checkpoint({"model_state": {"w": torch.zeros(4)}}, previous)
    monkeypatch.undo()
    assert_intact(previous)


def test_interrupt_while_writing_keeps_the_previous_checkpoint(previous: Path, monkeypatch):
    def interrupted(obj, stream, *args, **kwargs):
        stream.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):  # not swallowed, not turned into another error
        save_checkpoint({"model_state": {"w": torch.zeros(4)}}, previous)
    monkeypatch.undo()
    assert_intact(previous)


def test_lightning_checkpoints_are_atomic_too(tmp_path: Path, monkeypatch):
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io_plugin.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(2)}}, path)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.os, "replace", full)
    with pytest.raises(CheckpointError, match="previous file is intact"):
        io_plugin.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert not list(path.parent.glob(".*.tmp"))


def test_full_disk_during_training_ends_with_a_clear_error(
    runs, tmp_path: Path, monkeypatch, capsys
):
    """The third checkpoint write fails as on a full disk: the command exits 2 with a message
    naming the file, and the checkpoints written before are intact and loadable."""
    real_save, calls = torch.save, []

    def full_after_two(obj, stream, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, stream, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_after_two)
    out = tmp_path / "full"
    with one_thread():
        code = main(train_argv(runs["data"], out, 0))
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 2 and "mritumor: error:" in err and "No space left" in err, err[-2000:]
    assert "previous file is intact" in err and "Traceback" not in err
    assert load_checkpoint(out / "best.pt")["model_state"]  # epoch 0's, readable
    assert check_resume_checkpoint(out / "checkpoints" / "last.ckpt")


# ----------------------------------------------------------------------------- safe loading


class Evil:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def evil_checkpoint(path: Path, sentinel: Path, lightning: bool = False) -> Path:
    payload = {"format": CHECKPOINT_FORMAT, "simclr_state": {}, "metadata": Evil(sentinel)}
    if lightning:
        payload = {"state_dict": {}, "loops": {}, "epoch": 0, "callbacks": Evil(sentinel)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path: Path):
    sentinel = tmp_path / "PWNED"
    path = evil_checkpoint(tmp_path / "evil.pt", sentinel)
    with pytest.raises(CheckpointError, match="not a safe checkpoint.*Refused") as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)
    assert not sentinel.exists()
    torch.load(path, weights_only=False)  # the payload is real: unsafe loading runs it
    assert sentinel.exists()


def test_command_line_refuses_malicious_checkpoints(runs, tmp_path: Path, capsys):
    sentinel = tmp_path / "PWNED"
    evil = evil_checkpoint(tmp_path / "evil.pt", sentinel)
    data = str(runs["data"])
    commands = {
        "train-hierarchical --ssl_ckpt": train_argv(
            runs["data"], tmp_path / "t", 0, "--ssl_ckpt", str(evil)
        ),
        "evaluate-ssl --ckpt": ["-q", "evaluate-ssl", "--ckpt", str(evil), "--data_root", data],
        "train-multitask --seg_ckpt": ["-q", "train-multitask", "--data_root", data, "--outdir"]
        + [str(tmp_path / "m"), "--variant", "C", "--seg_ckpt", str(evil)],
        "train-multitask --ssl_ckpt": ["-q", "train-multitask", "--data_root", data, "--outdir"]
        + [str(tmp_path / "m2"), "--variant", "D", "--ssl_ckpt", str(evil)],
        "evaluate": ["-q", "evaluate", "--checkpoint", str(evil), "--data_root", data]
        + ["--outdir", str(tmp_path / "e")],
        "predict": ["-q", "predict", "--checkpoint", str(evil), "--input", data],
        "explain": ["-q", "explain", "--checkpoint", str(evil), "--data_root", data]
        + ["--outdir", str(tmp_path / "x")],
        "export": ["-q", "export", "--checkpoint", str(evil), "--format", "onnx"]
        + ["--output", str(tmp_path / "model.onnx")],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert "mritumor: error:" in err and "not a safe checkpoint" in err and str(evil) in err
        assert not sentinel.exists(), name


@pytest.mark.parametrize("command", ["train-hierarchical", "pretrain"])
def test_resume_refuses_a_malicious_last_checkpoint(runs, tmp_path: Path, capsys, command):
    sentinel = tmp_path / "PWNED"
    outdir = tmp_path / command
    evil_checkpoint(outdir / "checkpoints" / "last.ckpt", sentinel, lightning=True)
    if command == "pretrain":
        argv = ["-q", "pretrain", "--data_root", str(runs["data"]), "--outdir", str(outdir)]
        argv += ["--encoder", "small_cnn", "--image_size", "32", "--epochs", "1"]
        argv += ["--accelerator", "cpu", "--num_workers", "0", "--resume"]
    else:
        argv = train_argv(runs["data"], outdir, 0, "--resume")
    with one_thread():
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "not a safe checkpoint" in err and "last.ckpt" in err, err[-2000:]
    assert not sentinel.exists()


def test_checkpoint_of_another_format_says_which(tmp_path: Path):
    future = save_checkpoint({"model_state": {}}, tmp_path / "future.pt")
    payload = torch.load(future, weights_only=True)
    payload["format"] = CHECKPOINT_FORMAT + 1
    payload["metadata"] = {"versions": {"mritumor": "9.0.0"}}
    torch.save(payload, future)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(future)
    message = str(caught.value)
    assert f"format {CHECKPOINT_FORMAT + 1}" in message and "9.0.0" in message
    assert f"reads format {CHECKPOINT_FORMAT}" in message and str(future) in message
    torch.save({"model_state": {}}, tmp_path / "unversioned.pt")  # no format at all
    with pytest.raises(CheckpointError, match="format None"):
        load_checkpoint(tmp_path / "unversioned.pt")


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "not a readable checkpoint"), (b"PK\x03\x04garbage", "not a readable checkpoint")],
)
def test_damaged_checkpoints_are_clear_errors(tmp_path: Path, content: bytes, reason: str):
    path = tmp_path / "damaged.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=reason):
        check_resume_checkpoint(path)
    half = save_checkpoint({"model_state": {"w": torch.ones(1000)}}, tmp_path / "half.pt")
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(half)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_every_load_in_the_source_is_weights_only():
    """torch.load and Trainer.fit(ckpt_path=…) always with weights_only=True; numpy never
    unpickles (allow_pickle is never True)."""
    seen = {"torch.load": 0, "fit": 0}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name == "torch.load":
                seen["torch.load"] += 1
                assert keywords.get("weights_only") == "True", f"{path}:{node.lineno}"
            if name.endswith(".fit") and "ckpt_path" in keywords:
                seen["fit"] += 1
                assert keywords.get("weights_only") == "True", f"{path}:{node.lineno}"
            assert keywords.get("allow_pickle") != "True", f"{path}:{node.lineno}"
    assert seen["torch.load"] >= 2 and seen["fit"] >= 2


def test_checkpoints_record_versions_and_configuration(runs):
    checkpoint = load_checkpoint(runs["A"] / "best.pt")
    versions = checkpoint["metadata"]["versions"]
    assert versions["torch"] == str(torch.__version__)
    assert versions["lightning"] == L.__version__
    assert {"mritumor", "python", "torchvision"} <= set(versions)
    assert checkpoint["config"]["seed"] == 0 and checkpoint["config"]["backbone"] == "small_cnn"
    assert checkpoint["format"] == CHECKPOINT_FORMAT


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_split_sampling_and_metrics(runs):
    for name in ("split.json", "test_metrics.json"):
        assert (runs["A"] / name).read_text() == (runs["A2"] / name).read_text(), name
    assert_same_run(runs["A"], runs["A2"])


def test_another_seed_another_split(runs):
    a = json.loads((runs["A"] / "split.json").read_text())
    c = json.loads((runs["C"] / "split.json").read_text())
    assert (a["seed"], c["seed"]) == (0, 1)
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(c["train"] + c["val"] + c["test"])
    assert (a["train"], a["val"], a["test"]) != (c["train"], c["val"], c["test"])


# ----------------------------------------------------------------------------- resources


def test_output_folder_under_a_regular_file_is_refused(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ResourceError, match="not writable") as caught:
        check_writable(blocker / "run")
    assert str(blocker / "run") in str(caught.value)


@pytest.mark.skipif(IS_ROOT, reason="root ignores permissions; the regular-file test covers it")
def test_read_only_output_folder_is_refused(tmp_path: Path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ResourceError, match="not writable"):
            check_writable(folder / "run")
        with pytest.raises(ResourceError, match="not writable"):
            check_writable(folder)
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("command", ["train-hierarchical", "pretrain"])
def test_unwritable_outdir_fails_before_any_work(tmp_path: Path, capsys, monkeypatch, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    read = []
    monkeypatch.setattr(
        "mritumor.data.loading.prepare.read_catalog", lambda *a, **k: read.append(a) or 1 / 0
    )
    argv = ["-q", command, "--data_root", str(tmp_path), "--outdir", str(blocker / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "mritumor: error:" in err and "--outdir" in err and "not writable" in err
    assert read == []  # refused before reading any data


def test_free_space_check_reports_needed_and_free(tmp_path: Path, monkeypatch):
    free = 3 * 2**30 // 2  # 1.5 GiB

    def usage(path):
        return DiskUsage(10 * 2**30, 10 * 2**30 - free, free)

    monkeypatch.setattr(resources.shutil, "disk_usage", usage)
    assert check_free_space(tmp_path, 2**30, "the cache") == free
    with pytest.raises(ResourceError) as caught:
        check_free_space(tmp_path / "not" / "yet", 5 * 2**30, "the cache")
    assert "the cache needs 5.00 GiB" in str(caught.value) and "only 1.50 GiB free" in str(
        caught.value
    )


def test_disk_cache_refused_before_decoding_when_the_disk_is_too_small(
    tmp_path: Path, folder_tree: Path, monkeypatch
):
    catalog = read_catalog(folder_tree)
    prep = Preprocessing(image_size=64, channels=1)
    needed = len(catalog) * 64 * 64 * (2 * 1 + 1)  # float16 images + uint8 masks
    monkeypatch.setattr(
        resources.shutil,
        "disk_usage",
        lambda path: DiskUsage(2**40, 2**40 - needed + 1, needed - 1),
    )
    decoded = []
    original = io.read_image
    monkeypatch.setattr(io, "read_image", lambda *a, **k: decoded.append(a) or original(*a, **k))
    with pytest.raises(ResourceError, match="preprocessed slice cache needs"):
        SliceCache.build(catalog, prep, cache_dir=tmp_path / "cache", progress=False)
    assert decoded == [] and not list((tmp_path / "cache").rglob("*.npy"))
    monkeypatch.setattr(  # exactly enough: goes ahead
        resources.shutil,
        "disk_usage",
        lambda path: DiskUsage(2**40, 2**40 - needed, needed),
    )
    assert len(SliceCache.build(catalog, prep, cache_dir=tmp_path / "cache", progress=False))


def test_disk_filling_up_while_reserving_the_cache_is_a_clear_error(
    tmp_path: Path, folder_tree: Path, monkeypatch
):
    if not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate on this system")

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(ResourceError, match="no space left for the preprocessed slice cache"):
        SliceCache.build(
            read_catalog(folder_tree),
            Preprocessing(image_size=32, channels=1),
            cache_dir=tmp_path,
            progress=False,
        )


def test_unwritable_cache_dir_is_a_clear_error(tmp_path: Path, folder_tree: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ResourceError, match="cache folder.*not writable"):
        SliceCache.build(
            read_catalog(folder_tree),
            Preprocessing(image_size=32, channels=1),
            cache_dir=blocker / "cache",
            progress=False,
        )


def test_damaged_disk_cache_is_rebuilt_not_trusted(tmp_path: Path, folder_tree: Path):
    catalog = read_catalog(folder_tree)
    prep = Preprocessing(image_size=32, channels=1)
    first = SliceCache.build(catalog, prep, cache_dir=tmp_path, progress=False)
    (meta,) = tmp_path.rglob("meta.json")
    meta.write_text("{not json")
    again = SliceCache.build(catalog, prep, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(again.images))
    (images,) = tmp_path.rglob("images.npy")
    images.write_bytes(images.read_bytes()[:100])
    rebuilt = SliceCache.build(catalog, prep, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(rebuilt.images))


def test_checkpoint_files_get_the_usual_permissions(tmp_path: Path):
    """Written through a private temporary file, yet readable like any file the user makes."""
    before = os.umask(0o022)
    try:
        path = save_checkpoint({"model_state": {}}, tmp_path / "best.pt")
    finally:
        os.umask(before)
    assert path.stat().st_mode & 0o777 == 0o644
