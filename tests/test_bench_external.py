"""benchmarks/bench_external.py on a tiny labelled 'external' manifest made from the session's
synthetic cohort: groups, exclusion of adaptation images, and the numbers against sklearn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from conftest import load_benchmark


@pytest.fixture
def external_manifest(trained_data: Path, tmp_path: Path) -> Path:
    """Every synthetic slice as one 'image' with a sequence; one type renamed to no_tumour."""
    from mritumor.data.reading.readers import read_catalog

    table = read_catalog(trained_data).table
    rows = []
    for i, row in enumerate(table.itertuples()):
        tumour = "no_tumour" if row.tumor_type == "pituitary" else row.tumor_type
        rows.append(
            {
                "image": row.image,
                "patient_id": f"img{i:03d}",
                "tumor_type": tumour,
                "sequence": "T2" if i % 4 == 3 else "T1C+",
            }
        )
    path = tmp_path / "external" / "manifest.csv"
    path.parent.mkdir()
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_external_benchmark_groups_and_numbers(multitask_checkpoint, external_manifest, tmp_path):
    bench = load_benchmark("bench_external")
    scored = bench.score_images(multitask_checkpoint, external_manifest)
    table, probs, truth = scored["table"], scored["probs"], scored["truth"]
    assert len(table) == len(pd.read_csv(external_manifest))
    report = bench.summarise(scored, n_boot=50, headline_types=("astrocytoma", "meningioma"))
    # the headline group, chosen here from the manifest's own columns
    manifest = pd.read_csv(external_manifest).set_index("patient_id")
    ids = table["patient_id"].to_numpy()
    chosen = np.array(
        [manifest.at[i, "sequence"] == "T1C+" and manifest.at[i, "tumor_type"] != "no_tumour" for i in ids]
    )  # fmt: skip
    assert report["headline"]["n"] == chosen.sum()
    expected = accuracy_score(truth[chosen], probs[chosen].argmax(axis=1))
    assert report["headline"]["accuracy"]["value"] == pytest.approx(expected)
    no_tumour = np.array([manifest.at[i, "tumor_type"] == "no_tumour" for i in ids])
    assert report["ood"]["flagged_no_tumour"] == pytest.approx(scored["flagged"][no_tumour].mean())
    known = truth >= 0
    wrong = probs[known].argmax(axis=1) != truth[known]
    if 0 < wrong.sum() < known.sum():
        assert report["ood"]["error_auroc_known_types"] == pytest.approx(
            roc_auc_score(wrong, scored["ood_score"][known])
        )
    groups = {(g["tumor_type"], g["sequence"]): g for g in report["groups"]}
    assert groups[("no_tumour", "T1C+")]["accuracy"] is None  # a type the model does not know
    assert sum(g["n"] for g in report["groups"]) == len(table)


def test_external_benchmark_leaves_out_the_images_adaptation_used(
    multitask_checkpoint, external_manifest, tmp_path
):
    bench = load_benchmark("bench_external")
    used = ["img000", "img001", "img005"]
    split = tmp_path / "site_split.json"
    split.write_text(json.dumps({"train": used[:2], "val": used[2:], "test": []}))
    scored = bench.score_images(multitask_checkpoint, external_manifest, exclude=split)
    ids = set(scored["table"]["patient_id"])
    assert not ids & set(used)
    assert len(ids) == len(pd.read_csv(external_manifest)) - len(used)
