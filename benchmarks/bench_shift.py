"""Robustness and out-of-distribution benchmark of a figshare-trained multi-task checkpoint
(issue: Know when not to answer).

Conditions:
* ``clean``: the checkpoint's own figshare test patients (``checkpoint["split"]["test"]``;
  ``--part val``: its validation patients, for choosing a recipe without the test split);
* ``<corruption>@<severity>``: the same slices corrupted after preprocessing (model input in
  [0, 1]; deterministic, seed 0), with the scale in :data:`SEVERITY` (masks follow rotations);
* ``lgg_flair_tumour``: LGG slices with tumour, FLAIR channel only (another sequence: clearly
  out of distribution for a T1-CE model);
* ``lgg_t1ce_no_tumour``: LGG slices without tumour, post-contrast T1 channel (the figshare
  sequence, but brains without a tumour: a model that knows no ``no_tumour`` class should flag
  them rather than name a tumour);
* ``lgg_t1ce_tumour``: LGG slices with tumour, post-contrast T1 channel: the figshare sequence
  from other scanners (TCGA sites), every tumour a glioma, so accuracy is measured.

Per condition: slice type accuracy, ECE (15 bins), coverage and mean size of the checkpoint's
90 % conformal sets, accuracy of the 80 % most confident, the share flagged out of distribution
at the stored threshold, the OOD AUROC of the condition's slices against the clean ones, and
Dice (figshare conditions). ``--tta N`` wraps the engine in :class:`TTAEngine`.

Leave-one-institution-out on LGG (five trainings) is `benchmarks/bench_loio.py`.

Usage: python benchmarks/bench_shift.py --checkpoint RUN/best.pt --out shift.json [--tta 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvf

from mritumor.data.augment import augment_ops as ops
from mritumor.data.loading.cache import SliceCache
from mritumor.data.loading.datasets import SliceDataset, rows_of_patients
from mritumor.data.loading.labels import LabelSpace
from mritumor.data.reading.readers import read_catalog
from mritumor.evaluation.calibration import calibration_errors
from mritumor.evaluation.conformal import set_metrics
from mritumor.evaluation.ood import auroc
from mritumor.evaluation.selective import accuracy_at
from mritumor.evaluation.uncertainty import apply_uncertainty, ood_features, softmax
from mritumor.inference.engines import TorchEngine
from mritumor.inference.tta import TTAEngine
from mritumor.models.loading import load_model

# severity 1..5 → the corruption's parameter
SEVERITY = {
    "gamma": [1.3, 1.6, 2.0, 2.5, 3.0],  # exponent on the [0, 1] image (darker mid-tones)
    "blur": [0.5, 1.0, 1.5, 2.0, 3.0],  # Gaussian sigma, pixels at the model's size
    "noise": [0.02, 0.04, 0.08, 0.12, 0.18],  # Gaussian noise sd
    "downsample": [0.8, 0.6, 0.45, 0.33, 0.25],  # kept fraction of the resolution per axis
    "rotation": [10.0, 20.0, 30.0, 45.0, 90.0],  # degrees
    "bias_field": [0.1, 0.2, 0.3, 0.45, 0.6],  # sd of the degree-3 log-field coefficients
}


def corrupt(images: torch.Tensor, masks: torch.Tensor, kind: str, severity: int, seed: int = 0):
    """(images, masks) corrupted; severity 0 is the identity."""
    if severity == 0:
        return images, masks
    value = SEVERITY[kind][severity - 1]
    generator = torch.Generator().manual_seed(seed)
    n, size = images.shape[0], images.shape[-1]
    if kind == "gamma":
        out = ops.adjust_gamma(images, torch.full((n,), value))
    elif kind == "blur":
        kernel = 2 * int(np.ceil(3 * value)) + 1
        out = ops.gaussian_blur(images, ops.gaussian_kernels(torch.full((n,), value), kernel))
    elif kind == "noise":
        out = images + value * torch.randn(images.shape, generator=generator)
    elif kind == "downsample":
        matrices = ops.lowres_matrices(torch.full((n,), value), torch.ones(n, dtype=torch.bool), size)  # fmt: skip
        out = ops.low_resolution(images, matrices)
    elif kind == "rotation":
        out = tvf.rotate(images, value, interpolation=tvf.InterpolationMode.BILINEAR)
        masks = tvf.rotate(masks, value, interpolation=tvf.InterpolationMode.NEAREST)
    elif kind == "bias_field":
        coeff = value * torch.randn((n, 10), generator=generator)  # degree 3: 10 coefficients
        out = images * torch.exp(ops.bias_field(coeff, 3, (size, size)))
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return out.clamp(0.0, 1.0), masks


def run_condition(engine, state, batches, kind=None, severity=0) -> dict:
    """Logits, the OOD detector's features (``state``: the checkpoint's uncertainty state),
    Dice and empty-mask flags of every slice, optionally corrupted."""
    logits, embeddings, dices, empty = [], [], [], []
    for images, masks in batches:
        if kind is not None:
            images, masks = corrupt(images, masks, kind, severity)
        out = engine.run(images.numpy())
        logits.append(out["class_logits"])
        embeddings.append(ood_features(state, out))
        if "mask_logits" in out:
            empty.append((out["mask_logits"][:, 0] > 0).sum((1, 2)) == 0)
        if "mask_logits" in out and masks is not None:
            predicted, target = out["mask_logits"][:, 0] > 0, masks[:, 0].numpy() > 0.5
            overlap = (predicted & target).sum((1, 2))
            sizes = predicted.sum((1, 2)) + target.sum((1, 2))
            dices.append(np.where(sizes > 0, 2 * overlap / np.maximum(sizes, 1), 1.0))
    return {
        "logits": np.concatenate(logits),
        "embedding": np.concatenate(embeddings),
        "dice": np.concatenate(dices) if dices else None,
        "empty_mask": np.concatenate(empty) if empty else None,
    }


def metrics(loaded, result: dict, truth: np.ndarray | None, clean_scores=None) -> dict:
    state = loaded.uncertainty
    probs = softmax(result["logits"], loaded.temperature)
    applied = apply_uncertainty(state, result["embedding"], probs)
    record = {
        "n": len(probs),
        "flagged_share": float((~applied["in_distribution"]).mean()),
        "ood_score_median": float(np.median(applied["ood_score"])),
        "predicted_types": dict(
            zip(
                *np.unique(np.asarray(loaded.labels.types)[probs.argmax(1)], return_counts=True),
                strict=True,
            )
        ),
    }
    record["predicted_types"] = {k: int(v) for k, v in record["predicted_types"].items()}
    if clean_scores is not None:
        record["ood_auroc_vs_clean"] = float(auroc(clean_scores, applied["ood_score"]))
    if truth is not None:
        correct = probs.argmax(1) == truth
        sets = set_metrics(applied["sets"], truth, loaded.labels.types)
        record |= {
            "accuracy": float(correct.mean()),
            "ece": float(calibration_errors(truth, probs)["ece"]),
            "set_coverage": sets["coverage"],
            "set_size": sets["mean_set_size"],
            "accuracy_at_80": float(accuracy_at(probs.max(1), correct, 0.8)),
        }
    if result["dice"] is not None:
        record["dice"] = float(result["dice"].mean())
    if result["empty_mask"] is not None:
        # the segmentation head's own "no tumour here": every training slice had a tumour
        record["no_tumour_segmented_share"] = float(result["empty_mask"].mean())
        no_answer = result["empty_mask"] | ~applied["in_distribution"]
        record["flagged_or_no_tumour_share"] = float(no_answer.mean())
    return record, applied["ood_score"]


def figshare_batches(loaded, root: str, batch_size: int, limit: int | None, part: str = "test"):
    """The checkpoint's ``part`` patients (``val`` to choose a method, ``test`` to report)."""
    catalog = read_catalog(root)
    test = list((loaded.checkpoint.get("split") or {}).get(part) or [])
    if not test:
        raise SystemExit(f"the checkpoint records no {part} patients; train it with a split")
    cache = SliceCache.build(catalog.subset(test), loaded.preprocessing, progress=False)
    dataset = SliceDataset(cache, rows_of_patients(cache, test), loaded.labels)
    rows = range(len(dataset) if limit is None else min(limit, len(dataset)))
    items = [dataset[i] for i in rows]
    truth = np.array([int(item["tumor_type"]) for item in items])
    batches = [
        (
            torch.stack([x["image"].float() for x in items[i : i + batch_size]]),
            torch.stack([x["mask"].float() for x in items[i : i + batch_size]]),
        )
        for i in range(0, len(items), batch_size)
    ]
    return batches, truth


def lgg_batches(loaded, root: str, batch_size: int, limit: int, seed: int = 0) -> dict:
    """FLAIR of the tumour slices, post-contrast T1 of the tumour-free slices and of the tumour
    slices (the figshare sequence from other scanners: every one a glioma), each one channel at
    the model's size (the model's own intensity standardisation, 3 channels)."""
    catalog = read_catalog(root)
    prep = replace(loaded.preprocessing, channels=3)  # the model's size and intensity method
    cache = SliceCache.build(catalog, prep, progress=False)
    dataset = SliceDataset(cache, np.arange(len(cache.catalog)), LabelSpace.from_table(catalog.table))  # fmt: skip
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset))
    picked: dict[str, list] = {"lgg_flair_tumour": [], "lgg_t1ce_no_tumour": [], "lgg_t1ce_tumour": []}  # fmt: skip
    channel = {"lgg_flair_tumour": 1, "lgg_t1ce_no_tumour": 2, "lgg_t1ce_tumour": 2}
    for i in order:
        item = dataset[int(i)]
        with_tumour = bool(item["mask"].sum() > 0)
        names = ["lgg_flair_tumour", "lgg_t1ce_tumour"] if with_tumour else ["lgg_t1ce_no_tumour"]
        for name in names:
            if len(picked[name]) < limit:
                picked[name].append(item["image"][channel[name]][None].float())
        if all(len(v) >= limit for v in picked.values()):
            break
    return {
        name: [
            (torch.stack(images[i : i + batch_size]), None)
            for i in range(0, len(images), batch_size)
        ]  # fmt: skip
        for name, images in picked.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--figshare", default="../shared/data/figshare")
    parser.add_argument("--lgg", default="../shared/data/lgg")
    parser.add_argument("--out", required=True)
    parser.add_argument("--tta", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="first N figshare slices")
    parser.add_argument(
        "--part", choices=("val", "test"), default="test",
        help="the checkpoint's figshare patients to corrupt: val to choose, test to report",
    )  # fmt: skip
    parser.add_argument("--lgg_limit", type=int, default=400, help="LGG slices per condition")
    parser.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = parser.parse_args()
    start = time.perf_counter()
    loaded = load_model(args.checkpoint)
    if loaded.uncertainty is None or not loaded.classifies:
        raise SystemExit("needs a classifying checkpoint with the OOD/conformal state")
    engine = TorchEngine(loaded)
    if args.tta > 1:
        engine = TTAEngine(engine, args.tta)
    batches, truth = figshare_batches(loaded, args.figshare, args.batch_size, args.limit, args.part)
    records = {}
    state = loaded.uncertainty
    clean, clean_scores = metrics(loaded, run_condition(engine, state, batches), truth)
    records["clean"] = clean
    for kind in SEVERITY:
        for severity in args.severities:
            result = run_condition(engine, state, batches, kind, severity)
            records[f"{kind}@{severity}"] = metrics(loaded, result, truth, clean_scores)[0]
    if Path(args.lgg).exists():
        # LGG tumours are gliomas: with T1-CE that is an accuracy on other scanners' images
        glioma = list(loaded.labels.types).index("glioma") if "glioma" in loaded.labels.types else None  # fmt: skip
        for name, lgg in lgg_batches(loaded, args.lgg, args.batch_size, args.lgg_limit).items():
            lgg_truth = None
            if name == "lgg_t1ce_tumour" and glioma is not None:
                lgg_truth = np.full(sum(len(images) for images, _ in lgg), glioma)
            records[name] = metrics(
                loaded, run_condition(engine, state, lgg), lgg_truth, clean_scores
            )[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()  # fmt: skip
    document = {
        "checkpoint": str(Path(args.checkpoint).absolute()),
        "commit": commit,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
        "tta": args.tta,
        "part": args.part,
        "seconds": round(time.perf_counter() - start, 1),
        "severity_scale": SEVERITY,
        "conditions": records,
    }
    Path(args.out).write_text(json.dumps(document, indent=2))
    keys = ["n", "accuracy", "ece", "set_coverage", "set_size", "accuracy_at_80", "flagged_share", "ood_auroc_vs_clean", "dice", "no_tumour_segmented_share", "flagged_or_no_tumour_share"]  # fmt: skip
    print("| condition | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, record in records.items():
        cells = [record.get(k) for k in keys]
        print(f"| {name} | " + " | ".join("–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
