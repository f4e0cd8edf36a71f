"""A loaded checkpoint applied to one :class:`~mritumor.inference.inputs.PatientInput`.

Each slice is decoded and preprocessed with the training cache's own functions
(:func:`mritumor.data.cache.preprocess_image`, including its float16 storage), so a slice gives
the network the very tensor it gave it in evaluation. Hierarchical models see the checkpoint's
evaluation bag (``bag_size`` evenly spaced slices; ``all_slices`` for every slice), multi-task
models every slice. Probabilities are divided by the checkpoint's temperature unless
``calibrated=False``.

Per patient (see :class:`Predictor` for the record's keys): type probabilities; hierarchical:
end-to-end grade probabilities P(g) = Σt P(t) P(g|t) and the attention weight of every bag slice;
multi-task: per-slice type probabilities (the patient's are their mean, as in evaluation) and
the predicted tumour area in pixels of the original image.

Nothing here imports Lightning or MONAI: one patient is read, preprocessed and predicted in
well under a second after start-up.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mritumor.data import io
from mritumor.data.cache import preprocess_image
from mritumor.data.datasets import bag_positions
from mritumor.errors import DataError
from mritumor.inference.checks import check_channels
from mritumor.inference.inputs import SUPPORTED, PatientInput, SliceRef, plane, read_volume, where
from mritumor.models.loading import LoadedModel

log = logging.getLogger(__name__)

CHUNK = 32  # multi-task slices per forward pass


@dataclass
class PatientPrediction:
    record: dict  # JSON-ready result (see Predictor)
    images: torch.Tensor  # (n, C, S, S) the preprocessed slices the model saw
    used: list[SliceRef]  # the n slices, in order
    sizes: list[tuple[int, int]]  # their original (H, W)
    masks: list[np.ndarray] | None = None  # segmenting models: (H, W) bool, original size


class Predictor:
    """A loaded model applied to :class:`PatientInput` s.

    The record of a patient holds ``patient_id``, ``input``, ``n_slices`` (found),
    ``n_slices_used`` and ``slices`` (one entry per slice used, with its ``name``), and:

    * hierarchical: ``predicted_type``, ``type_probabilities`` {type: p}, ``predicted_grade``
      and ``grade_probabilities`` {grade: P(g) = Σt P(t) P(g|t)} (these sum to 1 minus the
      probability of types trained without grades), each slice's ``attention_weight`` (the
      pooling's weight; they sum to 1);
    * multi-task with a classifier: ``predicted_type`` and ``type_probabilities`` (mean of the
      slices'), each slice's ``predicted_type`` and ``type_probabilities``;
    * multi-task with a segmenter: ``tumour_area_px`` (all slices) and each slice's
      ``tumour_area_px``, counted on the mask at the image's original size.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        calibrated: bool = True,
        all_slices: bool = False,
        channels_last: bool = True,
    ):
        self.loaded = loaded
        self.temperature = loaded.temperature if calibrated else 1.0
        self.all_slices = all_slices
        self.channels_last = channels_last
        if channels_last:  # about twice as fast convolutions on CPU (oneDNN's native layout)
            loaded.model.to_channels_last()
        # the network predict runs: BatchNorm folded into the convolutions (a copy: explain's
        # hooks and the checkpoint's modules stay on loaded.model)
        self.model = fold_batchnorm(loaded.model)

    def header(self) -> dict:
        loaded = self.loaded
        bag = None
        if loaded.task == "hierarchical":
            bag = "all slices" if self.all_slices else {"bag_size": loaded.bag_size, "bag_policy": loaded.bag_policy}  # fmt: skip
        return {
            "checkpoint": str(loaded.path),
            "task": loaded.task,
            "variant": loaded.variant,
            "types": list(loaded.labels.types) if loaded.classifies else None,
            "grades": list(loaded.labels.grades) if loaded.task == "hierarchical" else None,
            "temperature": self.temperature,
            "calibrated": self.temperature != 1.0,
            "image_size": loaded.preprocessing.image_size,
            "channels": loaded.preprocessing.channels,
            "bag": bag,
        }

    # -- reading

    def _positions(self, n: int) -> list[int]:
        loaded = self.loaded
        if loaded.task != "hierarchical" or self.all_slices:
            return list(range(n))
        return bag_positions(n, loaded.bag_size, loaded.bag_policy)

    def read(self, patient: PatientInput):
        """The slices the model will see, decoded and preprocessed: (n, C, S, S) float32, the
        slices, their original (H, W). Undecodable slices are skipped with a warning and the
        bag is chosen again among the others, as the cache's dropped slices are."""
        candidates = list(patient.slices)
        decoded: dict[SliceRef, tuple] = {}
        decode = partial(
            self._decode, volume=read_volume(patient.volume) if patient.volume else None
        )
        while True:
            chosen = [candidates[i] for i in self._positions(len(candidates))]
            todo = [ref for ref in chosen if ref not in decoded]
            failed = set()
            for ref, result in zip(todo, _map(decode, todo), strict=True):
                if isinstance(result, str):
                    log.warning("%s: %s; slice skipped", where(ref), result)
                    failed.add(ref)
                else:
                    decoded[ref] = result
            if not failed:
                break
            candidates = [ref for ref in candidates if ref not in failed]
        if not chosen:
            raise DataError(f"{patient.source}: no slice could be decoded")
        for ref in chosen:
            check_channels(decoded[ref][0], self.loaded, where(ref))
        images = torch.stack([decoded[ref][1] for ref in chosen])
        return images, chosen, [decoded[ref][2] for ref in chosen]

    def _decode(self, ref: SliceRef, volume: np.ndarray | None = None):
        """(raw channels, preprocessed (C, S, S) float32 or None, (H, W)), or the reason the
        slice cannot be read. Runs in threads: decoding and preprocessing release the GIL."""
        try:
            image = io.read_image(ref.image, ref.frame) if volume is None else plane(volume, ref)
        except io.SliceReadError as error:
            return str(error)
        channels, size = image.shape[0], tuple(image.shape[1:])
        if channels != self.loaded.preprocessing.channels:
            return channels, None, size  # refused by read(), with both channel counts
        # the cache's function, float16 included: the model gets the values it was trained on
        return channels, preprocess_image(image, self.loaded.preprocessing).float(), size

    # -- predicting

    @torch.inference_mode()
    def __call__(self, patient: PatientInput) -> PatientPrediction:
        for problem in patient.problems:
            log.warning("%s", problem)
        if not patient.slices:
            raise DataError(f"{patient.source}: no image slice found ({SUPPORTED})")
        images, used, sizes = self.read(patient)
        record = {
            "patient_id": patient.patient_id,
            "input": str(patient.source),
            "n_slices": len(patient.slices),
            "n_slices_used": len(used),
        }
        if self.loaded.task == "hierarchical":
            record.update(self._hierarchical(images, used))
            return PatientPrediction(record, images, used, sizes)
        extra, masks = self._multitask(images, used, sizes)
        record.update(extra)
        return PatientPrediction(record, images, used, sizes, masks)

    def _hierarchical(self, images: torch.Tensor, used: list[SliceRef]) -> dict:
        from mritumor.models.hierarchical import hierarchical_probabilities

        labels = self.loaded.labels
        mask = torch.ones(1, len(used), dtype=torch.bool)
        outputs = self.model(images[None], mask)
        probs = hierarchical_probabilities(
            outputs["type_logits"], outputs["grade_logits"], self.temperature
        )
        types = probs["type"][0].tolist()
        result: dict = {
            "predicted_type": labels.types[int(np.argmax(types))],
            "type_probabilities": dict(zip(labels.types, types, strict=True)),
        }
        if labels.grades:
            normalised = probs["grade_e2e_normalised"][0]
            result["predicted_grade"] = labels.grades[int(normalised.argmax())]
            result["grade_probabilities"] = dict(
                zip(labels.grades, probs["grade_e2e"][0].tolist(), strict=True)
            )
        weights = outputs["slice_weights"][0].float().tolist()
        result["slices"] = [
            {"name": ref.name, "attention_weight": w} for ref, w in zip(used, weights, strict=True)
        ]
        return result

    def _multitask(self, images, used, sizes) -> tuple[dict, list[np.ndarray] | None]:
        model, labels = self.model, self.loaded.labels
        logits, masks = [], []
        for chunk in images.split(CHUNK):
            if self.channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            outputs = model(chunk)
            if "class_logits" in outputs:
                logits.append(outputs["class_logits"].float())
            if "mask_logits" in outputs:
                masks.append(outputs["mask_logits"][:, 0].float())
        slices = [{"name": ref.name} for ref in used]
        result: dict = {}
        if logits:
            probs = torch.softmax(torch.cat(logits) / self.temperature, dim=-1)
            patient = probs.mean(dim=0).tolist()
            result["predicted_type"] = labels.types[int(np.argmax(patient))]
            result["type_probabilities"] = dict(zip(labels.types, patient, strict=True))
            for entry, row in zip(slices, probs.tolist(), strict=True):
                entry["predicted_type"] = labels.types[int(np.argmax(row))]
                entry["type_probabilities"] = dict(zip(labels.types, row, strict=True))
        originals = None
        if masks:
            originals = [
                mask_at_original_size(m, *size)
                for m, size in zip(torch.cat(masks), sizes, strict=True)
            ]
            areas = [int(m.sum()) for m in originals]
            result["tumour_area_px"] = int(sum(areas))
            for entry, area in zip(slices, areas, strict=True):
                entry["tumour_area_px"] = area
        result["slices"] = slices
        return result, originals


def mask_at_original_size(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(S, S) mask logits → (height, width) bool: the inverse of the cache's
    :func:`~mritumor.data.cache.resize_square` (zero-pad to a centred square, resize): the
    logits are resized back to the square bilinearly, the padding is cropped, then > 0."""
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2  # resize_square's centring
    logits = logits.float()
    if logits.shape[-1] != side:
        logits = F.interpolate(
            logits[None, None], size=(side, side), mode="bilinear", align_corners=False
        )[0, 0]
    return (logits[top : top + height, left : left + width] > 0).cpu().numpy()


def _map(function, items: list):
    """Decoding in threads (PIL, zlib and pydicom's decoders release the GIL) when it pays."""
    if len(items) < 4:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(function, items))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode ``model`` with every BatchNorm that directly follows a convolution
    in a ``Sequential`` folded into that convolution (``torch.nn.utils.fusion``), the norm left
    as an ``Identity`` so module names and indices stay. Same outputs up to float rounding, and
    1.4–1.9× faster CPU inference for small_cnn/mobilenet_v2 (``benchmarks/RESULTS.md``).
    Pairs outside a ``Sequential`` (ResNet's ``conv1``/``bn1``) are left as they are."""
    from copy import deepcopy

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
