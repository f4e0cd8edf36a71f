"""--precision: which precision a run trains in (gpu-bf16 by default, auto, 32, bf16), how the
CPU's native bf16 is detected, that a bf16 step really runs under autocast while everything
that must stay float32 does, and where the choice is recorded."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mritumor import training
from mritumor.checkpoints import load_checkpoint
from mritumor.cli import build_parser
from mritumor.commands.common import apply_config
from mritumor.config import MultitaskConfig, TrainerConfig, save_resolved_config
from mritumor.training import PrecisionChoice, resolve_precision

NO_BF16 = {"amx_bf16": False, "avx512_bf16": False}
AMX = {"amx_bf16": True, "avx512_bf16": True}  # every AMX processor also has AVX512-BF16
AVX512_BF16 = {"amx_bf16": False, "avx512_bf16": True}


def cpu_with(monkeypatch, flags: dict[str, bool] | None) -> None:
    """Detection answers ``flags`` (None: no probe can tell)."""
    monkeypatch.setattr(training, "CPU_BF16_PROBES", (lambda: flags,))


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    monkeypatch.setattr(training, "_announced", set())


# ----------------------------------------------------------------------------- the choice


@pytest.mark.parametrize("flags", [NO_BF16, None], ids=["no-native-bf16", "nothing-can-tell"])
def test_auto_keeps_float32_on_a_cpu_without_native_bf16(monkeypatch, flags):
    cpu_with(monkeypatch, flags)
    choice = resolve_precision("auto", "cpu")
    assert choice.precision == "32-true" and choice.warning is None
    assert "without native bf16" in choice.reason


@pytest.mark.parametrize(
    ("flags", "feature"), [(AMX, "AMX-BF16"), (AVX512_BF16, "AVX512-BF16")], ids=["amx", "avx512"]
)
def test_auto_is_bf16_mixed_on_a_cpu_with_native_bf16(monkeypatch, flags, feature):
    cpu_with(monkeypatch, flags)
    choice = resolve_precision("auto", "cpu")
    assert choice == PrecisionChoice("bf16-mixed", f"CPU has {feature}")
    assert choice.describe() == f"precision: bf16-mixed (CPU has {feature})"


def test_the_default_stays_float32_on_a_bf16_cpu_and_bf16_on_a_gpu(monkeypatch):
    """The default without a recipe: only --precision auto looks at the CPU."""
    cpu_with(monkeypatch, AMX)
    assert TrainerConfig().precision == training.DEFAULT_PRECISION == "gpu-bf16"
    assert resolve_precision("gpu-bf16", "cpu").precision == "32-true"
    for precision in ("gpu-bf16", "auto"):
        assert resolve_precision(precision, "gpu").precision == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_precision("gpu-bf16", "auto").precision == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("gpu-bf16", "auto").precision == "32-true"
    assert resolve_precision("auto", "auto").precision == "bf16-mixed"  # the CPU, with AMX


def test_the_cpu_recipe_asks_for_auto_which_keeps_float32_without_native_bf16(monkeypatch):
    """Measured over a whole run (RESULTS: validation Dice and accuracy held under bf16), the
    cpu recipe's multi-task training asks for auto: bf16 on a bf16 CPU, float32 elsewhere."""
    from mritumor.recipes import recipe_values

    precision = recipe_values("cpu", "train-multitask")["precision"]
    assert precision == "auto"
    cpu_with(monkeypatch, NO_BF16)
    assert resolve_precision(precision, "cpu").precision == "32-true"
    cpu_with(monkeypatch, AVX512_BF16)
    assert resolve_precision(precision, "cpu").precision == "bf16-mixed"
    # only what was measured: SimCLR and the two-step model keep the default
    for command in ("pretrain", "train-hierarchical"):
        assert "precision" not in recipe_values("cpu", command)


def test_an_explicit_flag_wins_over_detection(monkeypatch):
    cpu_with(monkeypatch, AMX)
    assert resolve_precision("32", "cpu") == PrecisionChoice("32-true", "--precision 32")
    assert resolve_precision("32-true", "cpu").precision == "32-true"
    assert resolve_precision("bf16", "cpu") == PrecisionChoice("bf16-mixed", "--precision bf16")
    assert resolve_precision("16-mixed", "gpu").precision == "16-mixed"  # Lightning's, unchanged


def test_bf16_on_a_cpu_without_native_bf16_is_honoured_with_a_warning(monkeypatch, caplog):
    """Honoured, not refused: it reproduces a bf16 run's arithmetic (a GPU run's config.yaml,
    this test on any CI machine); the warning says it is emulated and slow."""
    cpu_with(monkeypatch, NO_BF16)
    choice = resolve_precision("bf16", "cpu")
    assert choice.precision == "bf16-mixed" and "emulated" in (choice.warning or "")
    assert resolve_precision("bf16-mixed", "cpu").warning == choice.warning.replace(
        "--precision bf16 ", "--precision bf16-mixed "
    )
    assert resolve_precision("bf16", "gpu").warning is None
    cpu_with(monkeypatch, AVX512_BF16)
    assert resolve_precision("bf16", "cpu").warning is None
    with caplog.at_level(logging.INFO, logger="mritumor.training"):
        training.announce_precision(choice)
        training.announce_precision(choice)  # a second variant or fold: logged once
    lines = [r for r in caplog.records if r.name == "mritumor.training"]
    assert [r.levelno for r in lines] == [logging.INFO, logging.WARNING]
    assert lines[0].getMessage() == "precision: bf16-mixed (--precision bf16)"


# ----------------------------------------------------------------------------- the probes


def test_probes_fall_back_in_order_and_a_failing_probe_is_skipped(monkeypatch):
    def broken():
        raise RuntimeError("a private torch function changed")

    monkeypatch.setattr(
        training, "CPU_BF16_PROBES", (broken, lambda: None, lambda: AVX512_BF16, lambda: AMX)
    )
    assert training.native_cpu_bf16() == "AVX512-BF16"
    monkeypatch.setattr(training, "CPU_BF16_PROBES", (broken, lambda: None))
    assert training.native_cpu_bf16() is None


def test_torch_probes_without_torch_api_answer_none(monkeypatch):
    for name in ("get_capabilities", "_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    assert training.probe_torch_capabilities() is None
    assert training.probe_torch_cpu_checks() is None


def test_torch_probes_read_torch_answers(monkeypatch):
    """get_capabilities (newer torch) and the _is_*_supported checks (earlier 2.x), faked."""
    capabilities = {"amx_tile": True, "amx_bf16": True, "avx512_bf16": True, "avx2": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities, raising=False)
    assert training.probe_torch_capabilities() == AMX
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True}, raising=False)
    assert training.probe_torch_capabilities() is None  # says nothing about bf16
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert training.probe_torch_cpu_checks() == AVX512_BF16
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert training.probe_torch_cpu_checks() == NO_BF16  # AMX tiles alone answered: none


def test_proc_cpuinfo_flags(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n\n"
    )
    assert training.probe_proc_cpuinfo(cpuinfo) == AMX
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert training.probe_proc_cpuinfo(cpuinfo) == NO_BF16
    assert training.probe_proc_cpuinfo(tmp_path / "absent") is None
    cpuinfo.write_text("Processor\t: ARMv8\nFeatures\t: fp asimd\n")  # no flags line
    assert training.probe_proc_cpuinfo(cpuinfo) is None


def test_the_real_probes_do_not_crash():
    for probe in training.CPU_BF16_PROBES:
        flags = probe()
        assert flags is None or set(flags) == set(NO_BF16)
    assert training.native_cpu_bf16() in (None, "AMX-BF16", "AVX512-BF16")


# ----------------------------------------------------------------------------- a real step

SIZE, BATCH = 32, 8


def tiny_loader():
    from mritumor.data.loading.device_data import DeviceSliceLoader
    from mritumor.data.loading.fast_path import batch_augment

    rng = np.random.default_rng(0)
    images = rng.random((2 * BATCH, 1, SIZE, SIZE), dtype=np.float32).astype(np.float16)
    masks = (rng.random((2 * BATCH, 1, SIZE, SIZE)) > 0.8).astype(np.uint8)
    return DeviceSliceLoader(
        images, masks, np.arange(2 * BATCH) % 2, np.full(2 * BATCH, -1),
        batch_size=BATCH, augment=batch_augment("light", SIZE), seed=0,
    )  # fmt: skip


def train_two_steps(precision: str, outdir: Path) -> dict:
    """Two training steps of a small multi-task network (both heads, weight average) through
    ``build_trainer``; what the network computed in, and the trained task."""
    from mritumor.models.multitask import build_multitask_model
    from mritumor.tasks.multitask import MultiTaskTask

    torch.manual_seed(0)
    model = build_multitask_model("D", 2, "small_cnn", 1, SIZE, decoder="unet").to_channels_last()
    seen: dict[str, list] = {"inputs": [], "outputs": [], "autocast": [], "losses": []}

    def record(module, inputs, outputs):
        if module.training:
            seen["inputs"].append(inputs[0].dtype)
            seen["outputs"] += [v.dtype for v in outputs.values()]
            seen["autocast"].append(torch.is_autocast_enabled("cpu"))

    class Recording(MultiTaskTask):
        def training_step(self, batch, batch_index):
            loss = super().training_step(batch, batch_index)
            seen["losses"].append(loss.dtype)
            return loss

    model.register_forward_hook(record)
    task = Recording(model, 1e-2, 0.0, 1, ema_decay=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    config = TrainerConfig(accelerator="cpu", precision=precision, quiet=True, seed=0)
    best = training.BestStateCheckpoint(
        outdir / "best.pt",
        lambda m: {"model_state": {k: v.detach() for k, v in m.eval_model.state_dict().items()}},
        monitor="train_loss",
    )
    trainer = training.build_trainer(
        config, outdir, 1, [best], limit_val_batches=0, num_sanity_val_steps=0,
        enable_checkpointing=False, logger=False,
    )  # fmt: skip
    trainer.fit(task, tiny_loader())
    changed = any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    return {**seen, "task": task, "trainer": trainer, "changed": changed}


def test_a_bf16_step_runs_under_autocast_and_keeps_float32_state(tmp_path):
    run = train_two_steps("bf16", tmp_path)
    assert run["trainer"].precision == "bf16-mixed" and run["changed"]
    assert run["autocast"] == [True, True]
    assert set(run["outputs"]) == {torch.bfloat16}  # the network computed in bf16
    assert set(run["inputs"]) == {torch.float32}  # the device loader's augmentation did not
    assert set(run["losses"]) == {torch.float32}
    task = run["task"]
    for network in (task.model, task.eval_model):  # the live weights and their average
        for name, value in [*network.named_parameters(), *network.named_buffers()]:
            if value.is_floating_point():  # BatchNorm's statistics included
                assert value.dtype == torch.float32, name
    saved = load_checkpoint(tmp_path / "best.pt")
    assert saved["training"]["precision"] == "bf16-mixed"
    assert {v.dtype for v in saved["model_state"].values() if v.is_floating_point()} == {
        torch.float32
    }


def test_a_float32_step_has_no_autocast(tmp_path):
    """The control: the same step with --precision 32 computes in float32."""
    run = train_two_steps("32", tmp_path)
    assert run["trainer"].precision == "32-true" and run["changed"]
    assert run["autocast"] == [False, False] and set(run["outputs"]) == {torch.float32}
    assert load_checkpoint(tmp_path / "best.pt")["training"]["precision"] == "32-true"


def test_auto_on_a_bf16_cpu_builds_a_bf16_trainer_and_says_so_once(monkeypatch, tmp_path, caplog):
    cpu_with(monkeypatch, AMX)
    config = TrainerConfig(accelerator="cpu", precision="auto", quiet=True)
    with caplog.at_level(logging.INFO, logger="mritumor.training"):
        trainers = [training.build_trainer(config, tmp_path, 1, logger=False) for _ in range(2)]
    assert [t.precision for t in trainers] == ["bf16-mixed", "bf16-mixed"]
    said = [r.getMessage() for r in caplog.records if r.name == "mritumor.training"]
    assert said == ["precision: bf16-mixed (CPU has AMX-BF16)"]


# ----------------------------------------------------------------------------- the plumbing


def parse(argv: list[str]):
    parser = build_parser()
    return apply_config(parser, parser.parse_args(argv), argv)


@pytest.mark.parametrize("command", ["train-multitask", "train-hierarchical", "pretrain"])
def test_the_flag_reaches_the_trainer_config(command):
    base = [command, "--data_root", "d", "--outdir", "o"]
    assert parse(base).precision == training.DEFAULT_PRECISION
    for value in ("auto", "32", "bf16"):
        assert parse([*base, "--precision", value]).precision == value


def test_config_yaml_records_the_flag_and_reloads_it(tmp_path):
    base = ["train-multitask", "--data_root", "d", "--outdir", "o"]
    config = MultitaskConfig.from_flags(
        vars(parse([*base, "--recipe", "cpu", "--precision", "auto"]))
    )
    assert config.trainer.precision == "auto"
    path = save_resolved_config(config, tmp_path)
    assert yaml.safe_load(path.read_text())["precision"] == "auto"
    assert parse([*base, "--config", str(path)]).precision == "auto"
    assert parse([*base, "--config", str(path), "--precision", "32"]).precision == "32"


def test_every_recipe_precision_resolves(monkeypatch):
    from mritumor import recipes

    cpu_with(monkeypatch, NO_BF16)
    lightning_values = {"32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true"}
    for name in recipes.recipe_names():
        for command in recipes.COMMANDS:
            value = recipes.recipe_values(name, command).get("precision")
            if value is not None:
                assert resolve_precision(value, "cpu").precision in lightning_values, (name, value)


def test_train_multitask_records_the_flag_and_what_was_used(tmp_path):
    """End to end: config.yaml holds the flag as given (re-usable with --config), best.pt the
    precision Lightning trained in; the test evaluation after training is float32."""
    from mritumor.cli import main
    from mritumor.data.acquire.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(
        tmp_path / "data", patients_per_class=3, slices_per_patient=2, image_size=SIZE, seed=2
    )
    outdir = tmp_path / "run"
    status = main(
        [
            "-q", "train-multitask", "--data_root", str(root), "--outdir", str(outdir),
            "--variant", "A", "--backbone", "small_cnn", "--image_size", str(SIZE),
            "--epochs", "1", "--batch_size", str(BATCH), "--n_boot", "20", "--patience", "0",
            "--augment", "none", "--num_workers", "0", "--val_frac", "0.25",
            "--test_frac", "0.3", "--n_overlays", "2", "--precision", "bf16",
        ]
    )  # fmt: skip
    assert status == 0
    assert yaml.safe_load((outdir / "config.yaml").read_text())["precision"] == "bf16"
    checkpoint = load_checkpoint(outdir / "best.pt")
    assert checkpoint["training"]["precision"] == "bf16-mixed"
    assert checkpoint["config"]["precision"] == "bf16"


def test_bench_bf16_summarises_steps_by_median_and_quartiles():
    from conftest import load_benchmark

    bench = load_benchmark("bench_bf16")
    result = bench.summary([1.0, 2.0, 3.0, 4.0, 10.0])
    assert result["s_per_step_median"] == 3.0 and result["s_per_step_iqr"] == [2.0, 4.0]
    assert result["steps_per_s"] == pytest.approx(1 / 3, abs=1e-3) and result["steps_timed"] == 5
    assert isinstance(bench.cpu_model_name(), str) and bench.cpu_model_name()
