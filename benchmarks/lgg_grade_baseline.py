"""Is WHO grade (2 vs 3) visible in these LGG images at all? A hand-crafted baseline beside
the two-step network (issue: Accurate models, "make grade learnable").

Per patient, from the expert masks and the three channels (pre-contrast T1, FLAIR,
post-contrast T1): log tumour area (all slices), number of tumour slices, contrast enhancement
(post/pre-contrast ratio of tumour to the rest of the brain), FLAIR tumour-to-brain ratio and
FLAIR heterogeneity inside the tumour. A standardised logistic regression, 5-fold patient CV
stratified by grade (seeded): the out-of-fold AUC (scikit-learn) pooled over patients and the
per-fold mean ± sd. Age (in data.csv) is a known grade predictor but not an image feature; it
is reported as a second row to show what non-imaging information adds.

Usage: python benchmarks/lgg_grade_baseline.py [LGG_ROOT]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

IMAGING = ["log_area", "tumour_slices", "enhancement", "flair_ratio", "flair_heterogeneity"]


def patient_features(root: Path, rows: pd.DataFrame) -> dict:
    sums = {"pre_t": 0.0, "post_t": 0.0, "flair_t": 0.0, "pre_b": 0.0, "post_b": 0.0, "flair_b": 0.0}  # fmt: skip
    counts = {"t": 0, "b": 0}
    flair_values = []
    for image_path, mask_path in rows[rows["has_tumor"] == 1][["image", "mask"]].itertuples(index=False):  # fmt: skip
        image = np.asarray(Image.open(root / image_path), dtype=np.float64)  # (H, W, 3)
        tumour = np.asarray(Image.open(root / mask_path)) > 0
        brain = (image[..., 1] > 10) & ~tumour  # FLAIR above the background
        pre, flair, post = image[..., 0], image[..., 1], image[..., 2]
        for name, channel in (("pre", pre), ("post", post), ("flair", flair)):
            sums[f"{name}_t"] += channel[tumour].sum()
            sums[f"{name}_b"] += channel[brain].sum()
        counts["t"] += int(tumour.sum())
        counts["b"] += int(brain.sum())
        flair_values.append(flair[tumour])
    t, b = max(counts["t"], 1), max(counts["b"], 1)

    def ratio(name: str) -> float:
        return (sums[f"{name}_t"] / t) / max(sums[f"{name}_b"] / b, 1e-6)

    flair = np.concatenate(flair_values) if flair_values else np.zeros(1)
    return {
        "log_area": float(np.log1p(rows["mask_area_px"].sum())),
        "tumour_slices": int((rows["has_tumor"] == 1).sum()),
        "enhancement": ratio("post") - ratio("pre"),
        "flair_ratio": ratio("flair"),
        "flair_heterogeneity": float(flair.std() / max(flair.mean(), 1e-6)),
    }


def cross_validated_auc(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    scores, per_fold = np.zeros(len(y)), []
    for train, test in folds.split(x, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(x[train], y[train])
        scores[test] = model.predict_proba(x[test])[:, 1]
        per_fold.append(roc_auc_score(y[test], scores[test]))
    return {
        "pooled_auc": float(roc_auc_score(y, scores)),
        "fold_auc_mean": statistics.mean(per_fold),
        "fold_auc_sd": statistics.stdev(per_fold),
    }


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/lgg")
    manifest = pd.read_csv(root / "manifest.csv")
    table = pd.DataFrame(
        {pid: patient_features(root, rows) for pid, rows in manifest.groupby("patient_id")}
    ).T
    clinical = pd.read_csv(root / "data.csv").set_index("Patient")
    table["age"] = clinical.loc[table.index, "age_at_initial_pathologic"].astype(float)
    grade = manifest.groupby("patient_id")["grade"].first().loc[table.index]
    y = (grade.astype(int) == 3).to_numpy().astype(int)
    results = {
        "imaging features": cross_validated_auc(table[IMAGING].to_numpy(float), y),
        "imaging features + age": cross_validated_auc(table[[*IMAGING, "age"]].to_numpy(float), y),
        "age alone": cross_validated_auc(table[["age"]].to_numpy(float), y),
    }
    print(f"{len(y)} patients, {int(y.sum())} grade 3")
    print("| features | pooled out-of-fold AUC | fold AUC mean ± sd |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['pooled_auc']:.3f} | {r['fold_auc_mean']:.3f} ± {r['fold_auc_sd']:.3f} |")  # fmt: skip
    print(json.dumps({"benchmark": "lgg_grade_baseline", "results": results}))


if __name__ == "__main__":
    main()
