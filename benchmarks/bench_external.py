"""What a trained multi-task checkpoint does on images from other sources (issue: models that
work beyond the hospital they were trained on).

Reads a labelled external folder (``../shared/data/external_dev``: a manifest with
``tumor_type`` and ``sequence`` per image, each image its own group), runs the checkpoint over
every image with its own preprocessing and temperature, applies its stored OOD detector and
conformal sets at the *slice* level (each image is one slice), and reports:

* the headline group — T1 after contrast (``T1C+``) gliomas and meningiomas, the figshare
  sequence and the types it knows: accuracy with a 95 % bootstrap interval over images, ECE,
  the share flagged out of distribution, set coverage and size overall and per class;
* per (tumour type, sequence): images, accuracy where the type is one the model knows, the
  share flagged;
* abstained: what ``predict --abstain`` does with each image — it answers "uncertain" when the
  detector flags it or, for a model that segments and has no ``no_tumour`` type, when its mask
  outlines nothing (a tumour classifier's answer about an image without a tumour means
  nothing); reported beside the detector's flags for the headline group, T2 and no-tumour
  images;
* OOD: the flagged share of T2 images and of no-tumour images; AUROC of the OOD score for
  the model's *errors* on images of known types (does the score rise where the model is wrong,
  not only where the source differs?), per sequence and overall;
* ``--exclude SPLIT``: images of that split.json's train and val parts are left out (those an
  ``mritumor adapt`` run used), so an adapted checkpoint is scored on images it never saw.

Images of one case are correlated (external_dev's README): intervals treat images as
independent and are therefore too narrow; per-type and per-sequence rows are the safer read.

Usage: python benchmarks/bench_external.py --checkpoint RUN/best.pt \
    --data_root ../shared/data/external_dev --out external.json [--exclude OUT/site_split.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from mritumor.data.loading.cache import SliceCache
from mritumor.data.loading.datasets import SliceDataset
from mritumor.data.reading.readers import read_catalog
from mritumor.evaluation.bootstrap import bootstrap_intervals
from mritumor.evaluation.calibration import calibration_errors
from mritumor.evaluation.conformal import set_metrics
from mritumor.evaluation.ood import auroc
from mritumor.evaluation.uncertainty import apply_uncertainty, ood_features, softmax
from mritumor.inference.loops import predict_slices
from mritumor.models.loading import load_model

HEADLINE_SEQUENCE = "T1C+"
HEADLINE_TYPES = ("glioma", "meningioma")


def score_images(
    checkpoint: str | Path, data_root: str | Path, exclude=None, batch_size=32
) -> dict:
    """Per image: source row fields, the calibrated probabilities, the prediction, OOD score
    and flag, and the conformal set (boolean membership over the model's types)."""
    loaded = load_model(checkpoint)
    if loaded.task != "multitask" or not loaded.classifies:
        raise SystemExit(f"{checkpoint}: a multi-task checkpoint with a classifier is needed")
    catalog = read_catalog(data_root)
    if exclude:
        split = json.loads(Path(exclude).read_text())
        used = set(split.get("train", [])) | set(split.get("val", []))
        catalog = catalog.subset([p for p in catalog.patients if p not in used])
    cache = SliceCache.build(catalog, loaded.preprocessing, progress=False)
    dataset = SliceDataset(cache, np.arange(len(cache)), loaded.labels)
    outputs = predict_slices(loaded.model, DataLoader(dataset, batch_size=batch_size))
    probs = softmax(outputs["class_logits"].numpy(), loaded.temperature)
    table = cache.catalog.table.iloc[outputs["rows"]].reset_index(drop=True)
    state = loaded.uncertainty
    applied = apply_uncertainty(state, ood_features(state, outputs), probs) if state else None
    types = list(loaded.labels.types)
    flagged = None if applied is None else ~applied["in_distribution"]
    masks = outputs["pred_masks"]
    # predict --abstain's second reason (Predictor): nothing segmented, for a tumour-only model
    empty = (
        ~masks.reshape(len(masks), -1).any(axis=1)
        if masks is not None and "no_tumour" not in types
        else np.zeros(len(probs), dtype=bool)
    )
    return {
        "table": table,
        "types": types,
        "probs": probs,
        "truth": np.array([types.index(t) if t in types else -1 for t in table["tumor_type"]]),
        "ood_score": None if applied is None else applied["ood_score"],
        "flagged": flagged,
        "nothing_outlined": empty,
        "abstained": empty if flagged is None else flagged | empty,
        "sets": None if applied is None else applied["sets"],
    }


def summarise(
    scored: dict, n_boot: int = 1000, seed: int = 0, headline_types=HEADLINE_TYPES
) -> dict:
    table, probs, truth, types = scored["table"], scored["probs"], scored["truth"], scored["types"]
    sequence = table["sequence"].fillna("unknown").astype(str).to_numpy()
    tumour = table["tumor_type"].astype(str).to_numpy()
    correct = probs.argmax(axis=1) == truth
    flagged, abstained = scored["flagged"], scored["abstained"]
    headline = (sequence == HEADLINE_SEQUENCE) & np.isin(tumour, headline_types)
    report: dict = {"n_images": int(len(table)), "types": types}
    report["headline"] = group_summary(scored, headline, n_boot, seed)
    report["headline"]["what"] = f"{HEADLINE_SEQUENCE} {' and '.join(headline_types)}"
    rows = []
    for (t, s), index in table.groupby(["tumor_type", sequence], sort=True).groups.items():
        mine = np.zeros(len(table), dtype=bool)
        mine[np.asarray(index)] = True
        rows.append(
            {
                "tumor_type": t,
                "sequence": s,
                "n": int(mine.sum()),
                "accuracy": float(correct[mine].mean()) if (truth[mine] >= 0).all() else None,
                "flagged_share": None if flagged is None else float(flagged[mine].mean()),
                "abstained_share": float(abstained[mine].mean()),
            }
        )
    report["groups"] = rows
    report["abstained"] = {
        "T2": _share(abstained[sequence == "T2"]),
        "no_tumour": _share(abstained[tumour == "no_tumour"]),
        "headline": _share(abstained[headline]),
        "nothing_outlined_no_tumour": _share(scored["nothing_outlined"][tumour == "no_tumour"]),
        "nothing_outlined_headline": _share(scored["nothing_outlined"][headline]),
    }
    if flagged is not None:
        known = truth >= 0
        score = scored["ood_score"]
        report["ood"] = {
            "flagged_T2": _share(flagged[sequence == "T2"]),
            "flagged_no_tumour": _share(flagged[tumour == "no_tumour"]),
            "flagged_headline": _share(flagged[headline]),
            "flagged_unknown_tumour_types_T1C+": _share(
                flagged[(truth < 0) & (tumour != "no_tumour") & (sequence == "T1C+")]
            ),
            "error_auroc_known_types": _error_auroc(score[known], correct[known]),
            "error_auroc_by_sequence": {
                s: _error_auroc(score[known & (sequence == s)], correct[known & (sequence == s)])
                for s in sorted(set(sequence[known]))
            },
            "error_auroc_headline": _error_auroc(score[headline], correct[headline]),
        }
    return report


def group_summary(scored: dict, mine: np.ndarray, n_boot: int, seed: int) -> dict:
    probs, truth = scored["probs"][mine], scored["truth"][mine]
    correct = (probs.argmax(axis=1) == truth).astype(float)
    interval = bootstrap_intervals(
        lambda idx: {"accuracy": float(correct[idx].mean())}, len(correct), n_boot=n_boot, seed=seed
    )["accuracy"]
    summary = {
        "n": int(mine.sum()),
        "accuracy": {k: interval[k] for k in ("value", "low", "high")},
        "ece": calibration_errors(truth, probs)["ece"],
        "per_class_accuracy": {
            name: float(correct[truth == k].mean())
            for k, name in enumerate(scored["types"])
            if (truth == k).any()
        },
    }
    if scored["flagged"] is not None:
        flagged = scored["flagged"][mine]
        summary["flagged_share"] = float(flagged.mean())
        summary["answered_accuracy"] = float(correct[~flagged].mean()) if (~flagged).any() else None
        summary["sets"] = set_metrics(scored["sets"][mine], truth, scored["types"])
    return summary


def _share(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def _error_auroc(score: np.ndarray, correct: np.ndarray) -> float | None:
    """AUROC of the OOD score separating wrong answers (positives) from right ones."""
    if correct.all() or not correct.any():
        return None
    return float(auroc(score[correct], score[~correct]))


def markdown(report: dict) -> str:
    head = report["headline"]
    lines = [
        f"headline ({head['what']}, {head['n']} images): accuracy "
        f"{head['accuracy']['value']:.3f} ({head['accuracy']['low']:.3f}–{head['accuracy']['high']:.3f}), "
        f"ECE {head['ece']:.3f}"
        + (
            f", flagged {head['flagged_share']:.3f}, 90 % sets coverage "
            f"{head['sets']['coverage']:.3f} size {head['sets']['mean_set_size']:.2f}"
            if "sets" in head
            else ""
        ),
        "",
        "| tumour type | sequence | images | accuracy | flagged | abstained (flagged or nothing outlined) |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["groups"]:
        accuracy = "–" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        flagged = "–" if row["flagged_share"] is None else f"{row['flagged_share']:.3f}"
        lines.append(
            f"| {row['tumor_type']} | {row['sequence']} | {row['n']} | {accuracy} | {flagged} "
            f"| {row['abstained_share']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--out", required=True, help="JSON report (a .md table beside it)")
    parser.add_argument("--exclude", default=None, help="split.json whose train/val images to skip")
    parser.add_argument("--n_boot", type=int, default=1000)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    report = summarise(score_images(args.checkpoint, args.data_root, args.exclude), args.n_boot)
    report["run"] = {
        "checkpoint": str(args.checkpoint),
        "exclude": args.exclude,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": platform.processor() or platform.machine(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
