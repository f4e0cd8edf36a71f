"""`mritumor export`: ONNX (run with onnxruntime) and TorchScript give the PyTorch model's
outputs, with dynamic batch (and bag) sizes, for hierarchical and multi-task checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mritumor.checkpoints import load_checkpoint
from mritumor.cli import main
from mritumor.models.loading import network_from_checkpoint

SIZE = 32
ATOL = 1e-4


def pytorch_outputs(task: str, checkpoint: Path, inputs: tuple) -> dict:
    """The checkpoint's own network (what training and predict run), not the export wrapper."""
    model = network_from_checkpoint(load_checkpoint(checkpoint))
    with torch.no_grad():
        out = model(*inputs)
    return {k: v.numpy() for k, v in out.items()}  # every output, embeddings included


def inputs_for(task: str, batch: int, slices: int) -> tuple:
    generator = torch.Generator().manual_seed(batch * 10 + slices)
    if task == "multitask":
        return (torch.rand(batch, 1, SIZE, SIZE, generator=generator),)
    images = torch.rand(batch, slices, 1, SIZE, SIZE, generator=generator)
    mask = torch.ones(batch, slices, dtype=torch.bool)
    mask[0, slices - 2 :] = False  # a padded bag: padding must change nothing
    return images, mask


def assert_same(expected: dict, got: dict) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        # -inf grade logits (grades never seen with a type) must be exported as -inf
        np.testing.assert_array_equal(np.isinf(got[name]), np.isinf(value))
        finite = np.isfinite(value)
        np.testing.assert_allclose(got[name][finite], value[finite], atol=ATOL, rtol=0)


@pytest.mark.parametrize("task", ["hierarchical", "multitask"])
def test_onnx_matches_pytorch_in_onnxruntime(task, request, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    checkpoint = request.getfixturevalue(f"{task}_checkpoint")
    output = tmp_path / "model.onnx"
    assert main(["-q", "export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(output)]) == 0  # fmt: skip
    assert "matches PyTorch" in capsys.readouterr().out
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for batch, slices in ((1, 2), (3, 7)):  # other sizes than the export's example (2, 3)
        inputs = inputs_for(task, batch, slices)
        feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
        got = dict(zip(names, session.run(None, feed), strict=True))
        assert_same(pytorch_outputs(task, checkpoint, inputs), got)
    sidecar = json.loads(output.with_name("model.onnx.json").read_text())
    assert sidecar["types"] == load_checkpoint(checkpoint)["labels"]["types"]
    assert sidecar["outputs"] == names


@pytest.mark.parametrize("task", ["hierarchical", "multitask"])
def test_torchscript_matches_pytorch(task, request, tmp_path):
    checkpoint = request.getfixturevalue(f"{task}_checkpoint")
    output = tmp_path / "model.pt"
    assert main(["-q", "export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--output", str(output)]) == 0  # fmt: skip
    extra = {"mritumor.json": ""}
    scripted = torch.jit.load(str(output), _extra_files=extra)
    info = json.loads(extra["mritumor.json"])
    assert info["task"] == task and info["preprocessing"]["image_size"] == SIZE
    for batch, slices in ((1, 2), (3, 7)):
        inputs = inputs_for(task, batch, slices)
        with torch.no_grad():
            values = scripted(*inputs)
        got = {name: v.numpy() for name, v in zip(info["outputs"], values, strict=True)}
        assert_same(pytorch_outputs(task, checkpoint, inputs), got)


def test_export_refuses_what_it_cannot_do(multitask_checkpoint, tmp_path, capsys):
    checkpoint = multitask_checkpoint
    (tmp_path / "folder.onnx").mkdir()
    capsys.readouterr()
    assert main(["-q", "export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(tmp_path / "folder.onnx")]) == 2  # fmt: skip
    assert "is a folder" in capsys.readouterr().err
    assert main(["-q", "export", "--checkpoint", str(tmp_path / "none.pt"), "--format", "onnx"]) == 2  # fmt: skip
    assert "not found" in capsys.readouterr().err


def test_verification_catches_a_wrong_export(multitask_checkpoint, tmp_path):
    """The built-in check is not a formality: a file from another model fails it."""
    from mritumor.errors import MritumorError
    from mritumor.export import export_model, verify_export
    from mritumor.models.loading import load_model

    checkpoint = multitask_checkpoint
    output = tmp_path / "m.pt"
    export_model(checkpoint, "torchscript", output, verify=False)
    loaded = load_model(checkpoint)
    with torch.no_grad():
        loaded.model.cls_out.bias += 0.01
    with pytest.raises(MritumorError, match="differs from PyTorch"):
        verify_export(loaded, output, "torchscript", 1e-4)
