"""``mritumor export``: a checkpoint's network as ONNX or TorchScript, checked against PyTorch.

Inputs and outputs (all float32 unless said; B and N are dynamic)::

    hierarchical  images (B, N, C, S, S), mask (B, N) bool (True = real slice, False = padding)
                  → type_logits (B, T), grade_logits (B, T, G) (-inf where a grade was never
                    seen with a type in training), slice_weights (B, N)
    multitask     images (B, C, S, S)
                  → class_logits (B, K) when the variant classifies,
                    mask_logits (B, 1, S, S) when it segments

``images`` are preprocessed slices in [0, 1] (see :mod:`mritumor.data.loading.cache`); logits are not
temperature-scaled. Everything a deployment needs to reproduce ``mritumor predict`` (label
names, preprocessing, temperature, bag size) is written beside the model as ``<output>.json``
and, for TorchScript, also inside the file (``extra_files["mritumor.json"]``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mritumor.errors import MritumorError
from mritumor.models.loading import LoadedModel, load_model

log = logging.getLogger(__name__)
FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
OPSET = 17
TOLERANCE = 1e-4  # max |exported - PyTorch| on logits and weights, float32 on CPU


class HierarchicalExport(nn.Module):
    """:class:`~mritumor.models.hierarchical.TwoStepClassifier` with a graph that exports.

    The model's own forward runs the backbone on ``images[mask]`` (only the real slices),
    which needs boolean indexing with a data-dependent shape. Here every slot goes through
    the backbone and the padded slots' features are then zeroed: in eval mode (BatchNorm with
    running statistics) a slice's features do not depend on the other slices, so the real
    slices' features, the pooling and the heads are exactly the model's (tested), at the cost
    of computing features for the padding."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor, mask: torch.Tensor):
        model = self.model
        batch, slots = mask.shape[0], mask.shape[1]
        features = model.backbone(images.flatten(0, 1)).reshape(batch, slots, -1)
        features = features * mask.unsqueeze(-1).to(features.dtype)
        patient, weights = model.pooling(features, mask)
        type_logits = model.type_head(patient)  # dropout is the identity in eval mode
        grades = max(model.n_grades, 1)
        grade_logits = model.grade_heads(patient).reshape(batch, model.n_types, grades)
        grade_logits = grade_logits[..., : model.n_grades]
        grade_logits = grade_logits.masked_fill(~model.allowed_grades, float("-inf"))
        return type_logits, grade_logits, weights, patient


class MultiTaskExport(nn.Module):
    """:class:`~mritumor.models.multitask.MultiTaskNet` returning a tuple (no dict); the
    feature statistics (and the classifier's embedding, what checkpoints written before them
    were fitted on) are outputs because out-of-distribution scores are computed on them."""

    def __init__(self, model: nn.Module, outputs: list[str]):
        super().__init__()
        self.model, self.outputs = model.eval(), outputs

    def forward(self, images: torch.Tensor):
        result = self.model(images)
        return tuple(result[name] for name in self.outputs)


def exportable(loaded: LoadedModel) -> tuple[nn.Module, list[str], list[str], dict]:
    """(module, input names, output names, dynamic axes) for a loaded checkpoint."""
    if loaded.task == "hierarchical":
        module = HierarchicalExport(loaded.model)
        inputs = ["images", "mask"]
        outputs = ["type_logits", "grade_logits", "slice_weights", "patient_embedding"]
        axes = {
            "patient_embedding": {0: "batch"},
            "images": {0: "batch", 1: "slices"},
            "mask": {0: "batch", 1: "slices"},
            "type_logits": {0: "batch"},
            "grade_logits": {0: "batch"},
            "slice_weights": {0: "batch", 1: "slices"},
        }
        return module, inputs, outputs, axes
    outputs = (
        ["class_logits", "class_embedding", "ood_features"] if loaded.model.classifies else []
    ) + (["mask_logits"] if loaded.model.segments else [])
    axes = {"images": {0: "batch"}, **{name: {0: "batch"} for name in outputs}}
    return MultiTaskExport(loaded.model, outputs), ["images"], outputs, axes


def example_inputs(loaded: LoadedModel, batch: int, slices: int, seed: int = 0) -> tuple:
    """Random preprocessed-like inputs in [0, 1]; hierarchical bags after the first lose their
    last slots to padding, so the mask's handling is part of every check."""
    prep = loaded.preprocessing
    generator = torch.Generator().manual_seed(seed)
    shape = (prep.channels, prep.image_size, prep.image_size)
    if loaded.task != "hierarchical":
        return (torch.rand(batch, *shape, generator=generator),)
    images = torch.rand(batch, slices, *shape, generator=generator)
    mask = torch.ones(batch, slices, dtype=torch.bool)
    for b in range(1, batch):
        mask[b, max(1, slices - b) :] = False
    return images, mask


def sidecar(loaded: LoadedModel, fmt: str, inputs: list[str], outputs: list[str]) -> dict:
    checkpoint = loaded.checkpoint
    return {
        "format": fmt,
        "task": loaded.task,
        "variant": loaded.variant,
        "inputs": inputs,
        "outputs": outputs,
        "types": list(loaded.labels.types),
        "grades": list(loaded.labels.grades),
        "temperature": loaded.temperature,
        # all fields, defaults included: an older checkpoint lacks the newer keys
        "preprocessing": asdict(loaded.preprocessing),
        "preprocessing_steps": "per channel: clip to the clip_low/clip_high percentiles (of "
        "all pixels for intensity 'percentile'; of the foreground for 'foreground', see "
        "mritumor.data.loading.intensity, background then 0) and scale to [0, 1]; zero-pad to a "
        "centred square; resize to image_size (bilinear, antialiased); round to float16 "
        "(mritumor.data.loading.cache.preprocess_image)",
        "bag": checkpoint.get("bag"),
        "probabilities": "softmax(type_logits / temperature); hierarchical grade: "
        "P(g) = sum_t P(t) softmax(grade_logits[t])(g)",
        "checkpoint": str(loaded.path),
        "checkpoint_date": (checkpoint.get("metadata") or {}).get("date"),
    }


def export_model(
    checkpoint: str | Path,
    fmt: str,
    output: str | Path | None = None,
    verify: bool = True,
    tolerance: float = TOLERANCE,
) -> dict:
    """Export and (by default) check the exported model against PyTorch on inputs of another
    batch size and bag length than the export's (so dynamic axes are checked too). Returns
    ``{"output", "sidecar", "max_abs_difference", "verified_with"}``."""
    if fmt not in FORMATS:
        raise MritumorError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    loaded = load_model(checkpoint)
    path = Path(output) if output else Path(checkpoint).with_suffix(SUFFIXES[fmt])
    if path.is_dir():
        raise MritumorError(f"--output {path} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    module, inputs, outputs, axes = exportable(loaded)
    info = sidecar(loaded, fmt, inputs, outputs)
    if fmt == "onnx":
        write_onnx(loaded, path)
    else:
        with torch.no_grad(), _quiet_exporters():
            example = example_inputs(loaded, batch=2, slices=3)
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(path), _extra_files={"mritumor.json": json.dumps(info)})
    sidecar_path = path.with_name(path.name + ".json")
    sidecar_path.write_text(json.dumps(info, indent=2))
    result = {"output": str(path), "sidecar": str(sidecar_path)}
    if verify:
        result.update(verify_export(loaded, path, fmt, tolerance))
    return result


def write_onnx(loaded: LoadedModel, path: Path) -> list[str]:
    """The network of ``loaded`` as an ONNX file at ``path`` (unchecked; see
    :func:`verify_export`); returns the output names. Shared with the ONNX Runtime engine of
    ``predict`` (:mod:`mritumor.inference.engines`)."""
    module, inputs, outputs, axes = exportable(loaded)
    # the exporter puts a module back in the mode it found it in, children included: a
    # wrapper left in (default) training mode would leave loaded.model training afterwards
    module.eval()
    example = example_inputs(loaded, batch=2, slices=3)
    with torch.no_grad(), _quiet_exporters():
        _export_onnx(module, example, path, inputs, outputs, axes)
    return outputs


@contextlib.contextmanager
def _quiet_exporters():
    """Both exporters announce their deprecation on every call; the choice is explained in
    :func:`_export_onnx`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _export_onnx(module, example, path: Path, inputs, outputs, axes) -> None:
    """The TorchScript-based exporter (``dynamo=False``): it needs nothing beyond torch, and
    ``dynamic_axes`` give dynamic B (and N) directly. The newer torch.export-based exporter
    (torch's default since 2.9) needs the extra ``onnxscript`` package and symbolic shapes for
    the same result; the graphs here (convolutions, linear layers, softmax, masked_fill) are
    ones the TorchScript exporter has always handled."""
    try:
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    except ModuleNotFoundError as error:
        raise MritumorError(
            f"ONNX export needs the package {error.name!r}: pip install onnx"
        ) from error


def verify_export(loaded: LoadedModel, path: Path, fmt: str, tolerance: float) -> dict:
    """Largest |exported − PyTorch| over every output, on fresh inputs (B = 3, N = 5 with
    padding); raises when above ``tolerance`` or when -inf entries differ."""
    module, _, outputs, _ = exportable(loaded)
    inputs = example_inputs(loaded, batch=3, slices=5, seed=1)
    with torch.no_grad():
        expected = [t.numpy() for t in _as_tuple(module(*inputs))]
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            log.info("onnxruntime is not installed: the ONNX file was not checked")
            return {"max_abs_difference": None, "verified_with": None}
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {
            item.name: tensor.numpy()
            for item, tensor in zip(session.get_inputs(), inputs, strict=True)
        }
        got = session.run(outputs, feed)
        engine = f"onnxruntime {onnxruntime.__version__}"
    else:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # jit's deprecation notice
            got = [t.numpy() for t in _as_tuple(torch.jit.load(str(path))(*inputs))]
        engine = f"torch.jit {torch.__version__}"
    worst = max_difference(expected, got, outputs)
    if worst > tolerance:
        raise MritumorError(
            f"the exported model differs from PyTorch by up to {worst:.2e} (> {tolerance:.0e}) "
            f"under {engine}; the file {path} should not be used"
        )
    log.info("exported model matches PyTorch within %.1e (%s)", worst, engine)
    return {"max_abs_difference": worst, "verified_with": engine}


def max_difference(expected: list, got: list, names: list[str]) -> float:
    """Largest absolute difference over outputs; infinite entries must coincide exactly."""
    worst = 0.0
    for name, a, b in zip(names, expected, got, strict=True):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            raise MritumorError(f"exported output {name} has shape {b.shape}, PyTorch {a.shape}")
        finite = np.isfinite(a)
        if not np.array_equal(finite, np.isfinite(b)) or not np.array_equal(a[~finite], b[~finite]):
            raise MritumorError(f"exported output {name} has -inf/NaN where PyTorch does not")
        if finite.any():
            worst = max(worst, float(np.abs(a[finite] - b[finite]).max()))
    return worst


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)
