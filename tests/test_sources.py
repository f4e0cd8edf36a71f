"""Several sources in one run: the combined catalog, splits within each source, the
source-balanced sampler, a source's channel choice, leave-one-source-out, --split_seed and
per-source metrics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score
from torch.utils.data import WeightedRandomSampler

from conftest import blob_slice, write_png
from mritumor.cli import build_parser
from mritumor.config import DataConfig
from mritumor.data.loading.cache import Preprocessing, SliceCache, infer_channels, preprocess_image
from mritumor.data.loading.device_data import DeviceSliceLoader
from mritumor.data.loading.labels import LabelSpace
from mritumor.data.loading.prepare import prepare_data, prepare_data_for, read_data
from mritumor.data.loading.splits import leave_one_source_out, make_split
from mritumor.data.reading.sources import read_sources_file, source_balanced_weights
from mritumor.errors import DataError


def write_tree(root: Path, types: tuple[str, ...], patients: int, slices: int, seed: int) -> Path:
    """ROOT/<type>/<type>-P<i>/slice_k.png (+ _mask.png): patient ids repeat across trees."""
    rng = np.random.default_rng(seed)
    for tumor_type in types:
        for p in range(patients):
            for k in range(slices):
                image, mask = blob_slice(rng, size=32)
                folder = root / tumor_type / f"{tumor_type[0]}{p}"  # the same ids in each tree
                write_png(folder / f"slice_{k}.png", image)
                write_png(folder / f"slice_{k}_mask.png", mask)
    return root


@pytest.fixture
def two_sources(tmp_path: Path) -> tuple[Path, Path]:
    big = write_tree(tmp_path / "big", ("glioma", "meningioma"), patients=20, slices=3, seed=0)
    small = write_tree(tmp_path / "small", ("glioma", "meningioma"), patients=7, slices=2, seed=1)
    return big, small


def test_two_source_catalog_names_prefixes_and_splits_within_each_source(two_sources):
    big, small = two_sources
    catalog = read_data([str(big), str(small)], source_name=["home", "site"])
    table = catalog.table
    assert Counter(table["source"]) == {"home": 2 * 20 * 3, "site": 2 * 7 * 2}
    # the same folder ids in both trees are two patients, never one
    assert {"home:g0", "site:g0"} <= set(table["patient_id"])
    assert table.groupby("patient_id")["source"].nunique().max() == 1
    split = make_split(table, 0.2, 0.2, seed=3, within="source")
    parts = [set(split.train), set(split.val), set(split.test)]
    assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert set().union(*parts) == set(table["patient_id"])
    for source in ("home", "site"):
        for part in parts:  # every source has patients in every part
            assert any(p.startswith(f"{source}:") for p in part)
    # within each source the shares are that source's: 40 home patients → 8 test, 14 site → 3
    assert sum(p.startswith("home:") for p in split.test) == 8
    assert sum(p.startswith("site:") for p in split.test) == 3  # sklearn: ceil(0.2 × 14)


def test_source_balanced_sampler_draws_sources_in_the_asked_proportion():
    sources = np.array(["a"] * 900 + ["b"] * 100)
    weights = source_balanced_weights(sources)
    assert weights.sum() == pytest.approx(1.0)
    generator = torch.Generator().manual_seed(0)
    drawn = list(WeightedRandomSampler(weights.tolist(), 20000, generator=generator))
    counts = Counter(sources[drawn])
    assert counts["b"] / 20000 == pytest.approx(0.5, abs=0.015)  # 10 % of the rows, half the draws
    uneven = source_balanced_weights(sources, {"a": 1.0, "b": 3.0})
    drawn = list(WeightedRandomSampler(uneven.tolist(), 20000, generator=generator))
    assert Counter(sources[drawn])["b"] / 20000 == pytest.approx(0.75, abs=0.015)
    with pytest.raises(DataError, match="no sampling share"):
        source_balanced_weights(sources, {"a": 1.0})


def test_device_loader_samples_with_the_source_weights():
    n = 400
    sources = np.array(["a"] * 360 + ["b"] * 40)
    loader = DeviceSliceLoader(
        np.zeros((n, 1, 8, 8), np.float32), None, np.zeros(n, np.int64), np.zeros(n, np.int64),
        batch_size=50, weights=source_balanced_weights(sources), seed=0,
    )  # fmt: skip
    rows = np.concatenate([batch["row"].numpy() for _ in range(10) for batch in loader])
    assert (sources[rows] == "b").mean() == pytest.approx(0.5, abs=0.03)


def test_a_source_channel_is_picked_before_preprocessing(tmp_path: Path):
    rng = np.random.default_rng(0)
    rgb_root = tmp_path / "rgb" / "glioma" / "P0"
    rgb_root.mkdir(parents=True)
    planes = (rng.random((3, 24, 24)) * 255).astype(np.uint8)
    Image.fromarray(np.moveaxis(planes, 0, -1)).save(rgb_root / "slice_0.png")
    grey = write_tree(tmp_path / "grey", ("meningioma",), patients=1, slices=1, seed=2)
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        "sources:\n"
        "  - {data_root: rgb, name: lgg, channel: 2, types: {glioma: astro}}\n"
        f"  - {{data_root: {grey}, name: home, masks: false}}\n"
    )
    catalog = read_data(None, sources=str(sources))
    assert infer_channels(catalog) == 1
    assert set(catalog.table["tumor_type"]) == {"astro", "meningioma"}
    assert catalog.table.loc[catalog.table["source"] == "home", "mask"].isna().all()
    prep = Preprocessing(image_size=16, channels=1)
    cache = SliceCache.build(catalog, prep, progress=False)
    row = int(np.flatnonzero(cache.catalog.table["source"] == "lgg")[0])
    expected = preprocess_image(planes[2:3].astype(np.float32), prep)
    assert torch.equal(cache.image(row).half(), expected)
    assert not cache.has_mask[cache.catalog.table["source"] == "home"].any()


def test_sources_file_and_flag_errors_are_clear(tmp_path: Path, two_sources):
    big, small = two_sources
    with pytest.raises(DataError, match="one name per --data_root"):
        read_data([str(big), str(small)], source_name=["only"])
    with pytest.raises(DataError, match="given twice"):
        read_data([str(big), str(big)])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"sources:\n  - {{data_root: {big}, chanel: 1}}\n")
    with pytest.raises(DataError, match="unknown key"):
        read_sources_file(bad)
    bad.write_text(f"sources:\n  - {{data_root: {big}, keep: {{sequence: [T1C+]}}}}\n")
    with pytest.raises(DataError, match="lacks"):
        read_data(None, sources=str(bad))
    with pytest.raises(DataError, match="--format applies to one"):
        read_data([str(big), str(small)], format="folder")


def test_data_root_flag_repeats_into_a_list_and_once_stays_a_path():
    parser = build_parser()
    once = parser.parse_args(["train-multitask", "--data_root", "a", "--outdir", "o"])
    assert once.data_root == "a"
    twice = parser.parse_args(
        ["train-multitask", "--data_root", "a", "--data-root", "b", "--outdir", "o",
         "--source_name", "x", "--source_name", "y", "--balance", "source+weights"]
    )  # fmt: skip
    assert twice.data_root == ["a", "b"] and twice.source_name == ["x", "y"]


def test_leave_one_source_out_tests_each_source_whole(two_sources):
    big, small = two_sources
    table = read_data([str(big), str(small)]).table
    folds = leave_one_source_out(table, val_frac=0.2, seed=0)
    assert [f.extra["held_out_source"] for f in folds] == ["big", "small"]
    for fold in folds:
        held_out = fold.extra["held_out_source"]
        assert set(fold.test) == set(table.loc[table["source"] == held_out, "patient_id"])
        assert not any(p.startswith(f"{held_out}:") for p in fold.train + fold.val)
        assert fold.val and not set(fold.val) & set(fold.train)


def test_split_seed_keeps_the_patients_while_the_training_seed_changes(two_sources):
    big, _ = two_sources

    def split(seed: int, split_seed: int | None = None):
        config = DataConfig(data_root=str(big), image_size=16, seed=seed, split_seed=split_seed)
        return prepare_data_for(config, progress=False).split

    splits = [split(seed, split_seed=7) for seed in (0, 1)]
    assert splits[0].test == splits[1].test and splits[0].val == splits[1].val
    default = [split(seed) for seed in (7, 1)]
    assert default[0].test == splits[0].test  # no --split_seed: the split follows --seed
    assert default[1].test != splits[0].test


def test_per_source_metrics_match_sklearn_on_each_source(tmp_path: Path, two_sources):
    from mritumor.evaluation.multitask import evaluate_multitask

    big, small = two_sources
    data = prepare_data([big, small], image_size=16, progress=False)
    labels = LabelSpace.from_table(data.catalog.table)
    rows = np.arange(len(data.catalog))
    truth = np.array([labels.type_index(t) for t in data.catalog.table["tumor_type"]])
    rng = np.random.default_rng(0)
    guess = np.where(rng.random(len(rows)) < 0.7, truth, 1 - truth)
    logits = torch.tensor(np.eye(2)[guess] * 4.0, dtype=torch.float32)
    prediction = {"rows": rows, "type_true": truth, "class_logits": logits, "pred_masks": None}
    metrics = evaluate_multitask(
        prediction, labels, tmp_path / "eval", data.cache, "B", n_boot=50, n_overlays=0
    )["metrics"]
    sources = data.catalog.table["source"].to_numpy()
    for name in ("big", "small"):
        mine = sources == name
        expected = accuracy_score(truth[mine], guess[mine])
        assert metrics["per_source"][name]["tumor_type_accuracy"]["value"] == pytest.approx(
            expected
        )
        assert metrics["per_source"][name]["n_slices"] == int(mine.sum())


def test_cv_by_source_trains_one_fold_per_held_out_source(two_sources, tmp_path: Path, capsys):
    import json

    from mritumor.cli import main

    big, small = two_sources
    outdir = tmp_path / "loso"
    assert main(["-q", "train-multitask", "--variant", "D", "--data_root", str(big),
                 "--data_root", str(small), "--cv_by", "source", "--outdir", str(outdir),
                 "--backbone", "small_cnn", "--image_size", "32", "--epochs", "1",
                 "--batch_size", "16", "--n_boot", "20", "--augment", "none", "--patience", "0",
                 "--num_workers", "0", "--n_overlays", "0"]) == 0  # fmt: skip
    assert "loso.md" in capsys.readouterr().out
    summary = json.loads((outdir / "loso_summary.json").read_text())
    assert set(summary) == {"big", "small"}
    assert summary["small"]["n_patients"] == 14 and summary["big"]["n_patients"] == 40
    for name in ("big", "small"):
        split = json.loads((outdir / name / "split.json").read_text())
        assert all(p.startswith(f"{name}:") for p in split["test"])
        assert not any(p.startswith(f"{name}:") for p in split["train"] + split["val"])
        metrics = json.loads((outdir / name / "test_metrics.json").read_text())
        assert set(metrics["per_source"]) == {name}
    assert (outdir / "loso.md").read_text().count("\n| ") == 2  # the two sources' rows
    assert main(["-q", "train-multitask", "--variant", "all", "--data_root", str(big),
                 "--data_root", str(small), "--cv_by", "source", "--outdir", str(tmp_path / "x")]) == 2  # fmt: skip
