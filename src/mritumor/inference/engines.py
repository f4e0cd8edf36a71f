"""Inference engines: what runs the network on a preprocessed batch (pre- and post-processing
stay in Python, :mod:`mritumor.inference.predictor`).

* :class:`TorchEngine`: the checkpoint's PyTorch network, BatchNorm folded, channels-last.
* :class:`OnnxEngine`: ONNX Runtime on the CPU, 2–4× faster than PyTorch eager for the small
  CNNs used here (``benchmarks/bench_predict.py``). The network is exported once per checkpoint
  and cached, keyed by the checkpoint file's SHA-256 (a changed checkpoint is exported again), in
  ``.mritumor_onnx/`` beside the checkpoint, or in ``$XDG_CACHE_HOME/mritumor/onnx`` where that
  folder cannot be written. On export the ONNX model is checked against PyTorch (probabilities
  within :data:`PARITY_TOLERANCE`) and refused otherwise; the cached card
  (:class:`~mritumor.inference.card.ModelCard`) then lets a later run predict without loading
  the checkpoint, or importing torch at all.

Both take numpy arrays — hierarchical ``run(images (B, N, C, S, S), mask (B, N) bool)``,
multi-task ``run(images (B, C, S, S))`` — and return ``{output name: float32 array}`` with the
names of :mod:`mritumor.export`. :func:`select_engine` turns ``--engine torch|onnx|auto`` into an
engine (``auto``: ONNX Runtime when it is installed and the export passes, else PyTorch, saying
why in the log).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from mritumor.errors import MritumorError
from mritumor.evaluation.state import load_state, save_state
from mritumor.inference import arrays
from mritumor.inference.card import ModelCard

log = logging.getLogger(__name__)

ENGINES = ("auto", "onnx", "torch")
PARITY_TOLERANCE = 1e-4  # max |ONNX − PyTorch| on every probability
CACHE_FOLDER = ".mritumor_onnx"
CACHE_FORMAT = 3  # 2: embeddings exported, uncertainty state beside the card; 3: feature statistics (ood_features) exported; bump when the export or the card changes: older cached files are ignored
INSTALL_HINT = "pip install 'mritumor[onnx]' (or: pip install onnx onnxruntime)"


class EngineUnavailable(MritumorError):
    """The engine asked for cannot run here (ONNX Runtime not installed)."""


def machine_threads() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (containers)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def output_names(card) -> list[str]:
    if card.task == "hierarchical":
        return ["type_logits", "grade_logits", "slice_weights", "patient_embedding"]
    return (["class_logits", "class_embedding", "ood_features"] if card.classifies else []) + (
        ["mask_logits"] if card.segments else []
    )


class TorchEngine:
    name = "torch"

    def __init__(self, loaded, channels_last: bool = True, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.task, self.outputs = loaded.task, output_names(loaded)
        self.channels_last = channels_last and loaded.task != "hierarchical"
        if channels_last:  # about twice as fast convolutions on CPU (oneDNN's native layout)
            loaded.model.to_channels_last()
        # BatchNorm folded into the convolutions (a copy: explain's hooks and the checkpoint's
        # modules stay on loaded.model)
        self.model = fold_batchnorm(loaded.model)

    def run(self, images: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
            if self.task == "hierarchical":
                result = self.model(tensor, torch.from_numpy(np.asarray(mask, dtype=bool)))
            else:
                if self.channels_last:
                    tensor = tensor.contiguous(memory_format=torch.channels_last)
                result = self.model(tensor)
            return {name: result[name].float().numpy() for name in self.outputs}


class OnnxEngine:
    name = "onnx"

    def __init__(self, path: str | Path, outputs: list[str], threads: int | None = None):
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or machine_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path, self.outputs = Path(path), list(outputs)
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [item.name for item in self.session.get_inputs()]

    def run(self, images: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        feed = {"images": np.ascontiguousarray(images, dtype=np.float32)}
        if "mask" in self.inputs:
            feed["mask"] = np.ascontiguousarray(mask, dtype=bool)
        got = self.session.run(self.outputs, feed)
        return dict(zip(self.outputs, got, strict=True))


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise EngineUnavailable(
            f"ONNX Runtime is not installed ({error}); {INSTALL_HINT}, or use --engine torch"
        ) from error
    return onnxruntime


# -- the export cache


def checkpoint_key(checkpoint: str | Path) -> str:
    """The cache key of a checkpoint: its contents' SHA-256 (not its name or date, so that a
    copy shares the export and a retrained ``best.pt`` at the same path does not)."""
    with open(checkpoint, "rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
    return f"{digest[:24]}-v{CACHE_FORMAT}"


def cache_folders(checkpoint: Path, cache_dir: str | Path | None = None) -> list[Path]:
    """Where cached exports are looked for, in order (the first writable one gets new ones)."""
    if cache_dir is not None:
        return [Path(cache_dir)]
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [checkpoint.parent / CACHE_FOLDER, xdg / "mritumor" / "onnx"]


def cached_onnx(checkpoint: Path, key: str, cache_dir=None) -> tuple[Path, dict] | None:
    for folder in cache_folders(checkpoint, cache_dir):
        model, meta = folder / f"{key}.onnx", folder / f"{key}.json"
        if model.is_file() and meta.is_file():
            try:
                info = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue  # a damaged card: export again
            if info.get("key") == key:
                return model, info
    return None


def _writable_folder(checkpoint: Path, cache_dir=None) -> Path:
    for folder in cache_folders(checkpoint, cache_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise MritumorError(
        f"no writable folder for the ONNX export of {checkpoint} (tried "
        f"{', '.join(map(str, cache_folders(checkpoint, cache_dir)))})"
    )


def export_to_cache(loaded, key: str, cache_dir=None, threads: int | None = None):
    """Export ``loaded``'s network to the cache, check it against PyTorch, then publish it
    (model first, card last, each by an atomic rename: a card always names a checked model)."""
    from mritumor.export import write_onnx

    folder = _writable_folder(Path(loaded.path), cache_dir)
    model, meta = folder / f"{key}.onnx", folder / f"{key}.json"
    partial = folder / f".{key}.{os.getpid()}.onnx"
    try:
        outputs = write_onnx(loaded, partial)
        engine = OnnxEngine(partial, outputs, threads)
        parity = check_parity(loaded, TorchEngine(loaded), engine)
        os.replace(partial, model)
    finally:
        partial.unlink(missing_ok=True)
    if loaded.uncertainty:
        save_state(loaded.uncertainty, folder / f"{key}.uncertainty.npz")
    info = {"key": key, "outputs": outputs, "card": ModelCard.from_loaded(loaded).to_dict(), "parity": parity}  # fmt: skip
    written = meta.with_name(f".{meta.name}.{os.getpid()}")
    written.write_text(json.dumps(info, indent=2))
    os.replace(written, meta)
    log.info("ONNX export of %s cached in %s (%s)", loaded.path, model, parity["summary"])
    return model, info


def check_parity(loaded, reference: TorchEngine, candidate: OnnxEngine) -> dict:
    """Both engines on random bags (3 patients × 5 slots, two of them padded) or slices:
    max |difference| of every probability the predictor reports (types, end-to-end grades,
    attention weights, mask pixels), raised when above :data:`PARITY_TOLERANCE`."""
    from mritumor.export import example_inputs

    inputs = [t.numpy() for t in example_inputs(loaded, batch=3, slices=5, seed=1)]
    expected, got = reference.run(*inputs), candidate.run(*inputs)
    worst = max(
        float(np.abs(a - b).max()) if a.size else 0.0
        for a, b in zip(
            probabilities(expected, loaded.temperature),
            probabilities(got, loaded.temperature),
            strict=True,
        )  # fmt: skip
    )
    if not worst <= PARITY_TOLERANCE:  # NaN fails too
        raise MritumorError(
            f"the ONNX Runtime model of {loaded.path} differs from PyTorch by up to {worst:.1e} "
            f"in probability (> {PARITY_TOLERANCE:.0e}); use --engine torch"
        )
    ort = import_onnxruntime()
    return {
        "max_abs_difference": worst,
        "tolerance": PARITY_TOLERANCE,
        "onnxruntime": ort.__version__,
        "summary": f"probabilities within {worst:.1e} of PyTorch",
    }


def probabilities(outputs: dict, temperature: float) -> list[np.ndarray]:
    result = []
    if "type_logits" in outputs:
        probs = arrays.hierarchical_probabilities(outputs["type_logits"], outputs["grade_logits"], temperature)  # fmt: skip
        result += [probs["type"], probs["grade_e2e"], outputs["slice_weights"]]
    if "class_logits" in outputs:
        result.append(arrays.softmax(outputs["class_logits"] / np.float32(temperature)))
    if "mask_logits" in outputs:
        result.append(1 / (1 + np.exp(-outputs["mask_logits"].astype(np.float64))))
    return result


# -- choosing


def onnx_engine(checkpoint: str | Path, loaded=None, cache_dir=None, threads=None):
    """(OnnxEngine, its card) for a checkpoint: from the cache, else exported and checked now."""
    import_onnxruntime()
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        from mritumor.checkpoints import CheckpointError

        raise CheckpointError(f"checkpoint {checkpoint} not found")
    key = checkpoint_key(checkpoint)
    found = cached_onnx(checkpoint, key, cache_dir)
    if found is None:
        if loaded is None:
            from mritumor.models.loading import load_model

            loaded = load_model(checkpoint)
        found = export_to_cache(loaded, key, cache_dir, threads)
    model, info = found
    state = model.with_name(f"{key}.uncertainty.npz")
    card = replace(
        ModelCard.from_dict(info["card"], checkpoint),
        uncertainty=load_state(state) if state.is_file() else None,
    )
    return OnnxEngine(model, info["outputs"], threads), card


def select_onnx(name: str, checkpoint: str | Path, loaded=None, cache_dir=None, threads=None):
    """``(OnnxEngine, card)`` for ``--engine onnx|auto``, or None where ``auto`` falls back to
    PyTorch (logged with the reason); ``onnx`` raises instead."""
    if name not in ENGINES:
        raise MritumorError(f"--engine must be one of {', '.join(ENGINES)}, not {name!r}")
    if name == "torch":
        return None
    try:
        return onnx_engine(checkpoint, loaded, cache_dir, threads)
    except EngineUnavailable as error:
        if name == "onnx":
            raise
        log.info("--engine auto: PyTorch, because %s", error)
    except MritumorError as error:
        from mritumor.checkpoints import CheckpointError

        if name == "onnx" or isinstance(error, CheckpointError):
            raise
        log.warning("--engine auto: PyTorch, because the ONNX export failed: %s", error)
    return None


def select_engine(
    name: str, checkpoint: str | Path, loaded=None, cache_dir=None, threads: int | None = None
):
    """``(engine, model)`` for ``--engine name``; ``model`` is the :class:`LoadedModel` (torch)
    or the cached :class:`ModelCard` (onnx), both read the same way by the predictor."""
    found = select_onnx(name, checkpoint, loaded, cache_dir, threads)
    if found is not None:
        return found
    if loaded is None:
        from mritumor.models.loading import load_model

        loaded = load_model(checkpoint)
    return TorchEngine(loaded, threads=threads), loaded


def fold_batchnorm(model):
    """A copy of an eval-mode ``model`` with every BatchNorm that directly follows a convolution
    in a ``Sequential`` folded into that convolution (``torch.nn.utils.fusion``), the norm left
    as an ``Identity`` so module names and indices stay. Same outputs up to float rounding, and
    1.4–1.9× faster CPU inference for small_cnn/mobilenet_v2 (``benchmarks/RESULTS.md``).
    Pairs outside a ``Sequential`` (ResNet's ``conv1``/``bn1``) are left as they are."""
    from copy import deepcopy

    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model: training norms use batch statistics")  # fmt: skip
    folded = deepcopy(model)
    for container in folded.modules():
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = container._modules[first], container._modules[second]
            if (
                isinstance(conv, nn.Conv2d)
                and type(norm) is nn.BatchNorm2d
                and norm.track_running_stats
                and conv.out_channels == norm.num_features
            ):
                container._modules[first] = fuse_conv_bn_eval(conv, norm)
                container._modules[second] = nn.Identity()
    return folded
