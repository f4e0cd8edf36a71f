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


@pytest.fixture
def half_outlining_checkpoint(multitask_checkpoint, external_manifest, tmp_path) -> Path:
    """The tiny checkpoint with its mask output's bias moved so that about half the external
    images get an empty mask (the 1-epoch model outlines something in every one)."""
    import torch

    from mritumor.checkpoints import save_checkpoint
    from mritumor.data.loading.cache import SliceCache
    from mritumor.data.loading.datasets import SliceDataset
    from mritumor.data.reading.readers import read_catalog
    from mritumor.models.loading import load_model

    loaded = load_model(multitask_checkpoint)
    cache = SliceCache.build(read_catalog(external_manifest), loaded.preprocessing, progress=False)
    dataset = SliceDataset(cache, np.arange(len(cache)), loaded.labels)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        peaks = loaded.model.eval()(images)["mask_logits"].amax(dim=(1, 2, 3))
    # the cut: the middle of the widest gap between neighbouring peaks in their middle half, so
    # that no image sits near it (the benchmark and predict run the network differently)
    ordered = np.sort(peaks.numpy())
    middle = np.arange(len(ordered) // 4, 3 * len(ordered) // 4)
    widest = middle[np.argmax(ordered[middle + 1] - ordered[middle])]
    payload = torch.load(multitask_checkpoint, weights_only=True)
    payload["model_state"]["seg_out.bias"] -= float(ordered[widest] + ordered[widest + 1]) / 2
    path = tmp_path / "half" / "best.pt"
    path.parent.mkdir()
    save_checkpoint({k: v for k, v in payload.items() if k != "format"}, path)
    return path


def test_abstained_is_what_predict_abstain_does(half_outlining_checkpoint, external_manifest):
    """Per image, the benchmark's `abstained` (flagged, or nothing outlined by a tumour-only
    model) against `Predictor(abstain=True)` — the code path of `predict --abstain` — run on
    the same image files one by one."""
    from mritumor.inference.inputs import discover
    from mritumor.inference.predictor import Predictor

    bench = load_benchmark("bench_external")
    scored = bench.score_images(half_outlining_checkpoint, external_manifest)
    empty = scored["nothing_outlined"]
    assert 0.2 < empty.mean() < 0.8  # both kinds of image are there
    assert np.array_equal(scored["abstained"], scored["flagged"] | empty)
    predictor = Predictor.from_checkpoint(half_outlining_checkpoint, engine="torch", abstain=True)
    said = np.array(
        [predictor(discover(image)[0]).record["predicted_type"] == "uncertain" for image in scored["table"]["image"]]
    )  # fmt: skip
    assert np.array_equal(said, scored["abstained"])
    report = bench.summarise(scored, n_boot=20, headline_types=("astrocytoma", "meningioma"))
    table = scored["table"]
    no_tumour = (table["tumor_type"] == "no_tumour").to_numpy()
    t2 = (table["sequence"] == "T2").to_numpy()
    assert report["abstained"]["no_tumour"] == pytest.approx(scored["abstained"][no_tumour].mean())
    assert report["abstained"]["T2"] == pytest.approx(scored["abstained"][t2].mean())
    assert report["abstained"]["nothing_outlined_no_tumour"] == pytest.approx(
        empty[no_tumour].mean()
    )
    # the Markdown table's last column is each group's abstained share
    lines = bench.markdown(report).splitlines()
    for group in report["groups"]:
        start = f"| {group['tumor_type']} | {group['sequence']} | {group['n']} |"
        (line,) = [x for x in lines if x.startswith(start)]
        assert line.endswith(f"| {group['abstained_share']:.3f} |")
