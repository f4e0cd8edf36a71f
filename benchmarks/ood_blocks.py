"""Which encoder resolutions should the OOD detector sum? Chosen on validation patients and the
external development images, never on a test split (issue: models that work beyond the
hospital they were trained on).

A multi-task checkpoint's detector sums one standardised Mahalanobis distance per encoder
resolution. Shallow resolutions see intensity and texture (which differ by scanner: they flag
every image of another site), deep ones see content (sequence, tumour or not). For every
non-empty subset of the resolutions this script sets the threshold that keeps 95 % of the
checkpoint's validation slices (as training does) and reports the share flagged of each
external group: T1-after-contrast gliomas and meningiomas (the model's own task: should pass),
T2 images and no-tumour images (should be flagged), unseen tumour types, and the AUROC of the
score for the model's errors. The rule, fixed before looking: the subset with the largest
``mean(flagged T2, flagged no-tumour) − flagged T1C+ glioma/meningioma``.

Usage: python benchmarks/ood_blocks.py --checkpoint RUN/best.pt --data_root ../shared/data/figshare \
    --external ../shared/data/external_dev --out ood_blocks.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from mritumor.data.loading.cache import SliceCache
from mritumor.data.loading.datasets import SliceDataset, rows_of_patients
from mritumor.data.reading.readers import read_catalog
from mritumor.evaluation.ood import OODDetector, auroc
from mritumor.evaluation.uncertainty import softmax
from mritumor.inference.loops import predict_slices
from mritumor.models.loading import load_model


def block_distances(detector: OODDetector, features: np.ndarray) -> np.ndarray:
    """(N, blocks) standardised distances (the detector's own validation loc/scale)."""
    distances = detector._distances(features)
    return (distances - detector.loc) / detector.scale


def outputs_of(loaded, catalog, patients=None, batch_size: int = 32) -> dict:
    cache = SliceCache.build(catalog, loaded.preprocessing, progress=False)
    rows = rows_of_patients(cache, patients) if patients is not None else np.arange(len(cache))
    out = predict_slices(loaded.model, DataLoader(SliceDataset(cache, rows, loaded.labels), batch_size=batch_size))  # fmt: skip
    out["table"] = cache.catalog.table.iloc[out["rows"]].reset_index(drop=True)
    return out


def choose_blocks(val: np.ndarray, groups: dict[str, np.ndarray], keep: float = 0.95) -> list[dict]:
    """One row per subset of blocks: the threshold on the validation sums and each group's
    flagged share; sorted best first by the module's rule."""
    rows = []
    n_blocks = val.shape[1]
    for size in range(1, n_blocks + 1):
        for subset in itertools.combinations(range(n_blocks), size):
            chosen = list(subset)
            threshold = float(np.quantile(val[:, chosen].sum(1), keep, method="inverted_cdf"))
            flagged = {
                name: float((d[:, chosen].sum(1) > threshold).mean()) for name, d in groups.items()
            }
            rule = (flagged["T2"] + flagged["no_tumour"]) / 2 - flagged["T1C+ glioma/meningioma"]
            rows.append(
                {"blocks": chosen, "threshold": threshold, "flagged": flagged, "rule": rule}
            )
    return sorted(rows, key=lambda r: -r["rule"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data_root", required=True, help="the training data (validation part)")
    parser.add_argument("--external", required=True, help="labelled external development images")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    loaded = load_model(args.checkpoint)
    state = loaded.uncertainty
    if not state or state["ood"].get("loc") is None:
        raise SystemExit("the checkpoint's detector has no per-block standardisation")
    detector = OODDetector.from_state(state["ood"])
    val = outputs_of(loaded, read_catalog(args.data_root), loaded.checkpoint["split"]["val"])
    ext = outputs_of(loaded, read_catalog(args.external))
    table = ext["table"]
    sequence = table["sequence"].fillna("unknown").astype(str).to_numpy()
    tumour = table["tumor_type"].astype(str).to_numpy()
    known = np.isin(tumour, loaded.labels.types)
    distances = block_distances(detector, ext["ood_features"])
    groups = {
        "T1C+ glioma/meningioma": distances[(sequence == "T1C+") & known],
        "T1 glioma/meningioma": distances[(sequence == "T1") & known],
        "T2": distances[sequence == "T2"],
        "no_tumour": distances[tumour == "no_tumour"],
        "other tumour types T1C+": distances[(tumour == "other_tumour") & (sequence == "T1C+")],
    }
    rows = choose_blocks(block_distances(detector, val["ood_features"]), groups)
    truth = np.array([loaded.labels.types.index(t) if t in loaded.labels.types else -1 for t in tumour])  # fmt: skip
    wrong = softmax(ext["class_logits"].numpy(), loaded.temperature).argmax(1) != truth
    for row in rows:
        score = distances[:, row["blocks"]].sum(1)
        row["error_auroc_known"] = (
            float(auroc(score[known & ~wrong], score[known & wrong])) if (known & wrong).any() else None
        )  # fmt: skip
    report = {"n_val_slices": len(val["rows"]), "n_external": len(table), "subsets": rows}
    Path(args.out).write_text(json.dumps(report, indent=2))
    for row in rows[:8] + [r for r in rows if len(r["blocks"]) == distances.shape[1]]:
        flagged = ", ".join(f"{k} {v:.2f}" for k, v in row["flagged"].items())
        print(f"blocks {row['blocks']}: {flagged}; error AUROC {row['error_auroc_known']}")
    return report


if __name__ == "__main__":
    main()
