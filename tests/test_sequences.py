"""The MR sequence a model was trained on, recorded from the sources (figshare: T1 after
contrast; LGG's picked channel; a manifest's column) into ``best.pt``'s ``training_data``."""

from __future__ import annotations

import pandas as pd
import pytest
from tests.conftest import SHARED_DATA

from mritumor.checkpoints import load_checkpoint
from mritumor.data.reading.sequences import (
    normalise,
    picked_channel_sequence,
    table_sequences,
    training_data,
)
from mritumor.data.reading.sources import SourceSpec, shape_source


@pytest.mark.parametrize(
    ("name", "expected"),
    [("T1C+", "T1 post-contrast"), ("post-contrast", "T1 post-contrast"), ("T2", "T2"),
     ("flair", "FLAIR"), ("", None), (None, None), (float("nan"), None), ("DWI", "DWI")],
)  # fmt: skip
def test_names_are_normalised(name, expected):
    assert normalise(name) == expected


def test_picked_channel_names_its_sequence():
    channels = "pre-contrast,FLAIR,post-contrast"
    assert picked_channel_sequence(channels, 2) == "T1 post-contrast"
    assert picked_channel_sequence(channels, 1) == "FLAIR"
    assert picked_channel_sequence(channels, None) == "T1 + FLAIR + T1 post-contrast"
    assert picked_channel_sequence(channels, 5) is None
    assert picked_channel_sequence(None, 0) is None


def test_a_source_spec_channel_sets_the_rows_sequence():
    table = pd.DataFrame(
        {"image": ["a.png", "b.png"], "mask": [None, None], "patient_id": ["p", "q"],
         "tumor_type": ["astrocytoma", "glioma"], "grade": [None, None], "frame": [-1, -1],
         "source": ["manifest", "manifest"], "channels": ["pre-contrast,FLAIR,post-contrast"] * 2,
         "sequence": ["T1 + FLAIR + T1 post-contrast"] * 2},
    )  # fmt: skip
    shaped = shape_source(table, SourceSpec("x", name="lgg", channel=2), "lgg")
    assert table_sequences(shaped) == ["T1 post-contrast"]
    unpicked = shape_source(table, SourceSpec("x", name="lgg"), "lgg")
    assert table_sequences(unpicked) == ["T1 + FLAIR + T1 post-contrast"]
    assert training_data(shaped) == {"sources": ["lgg"], "sequences": ["T1 post-contrast"]}


def test_a_trained_checkpoint_records_its_training_data(multitask_checkpoint):
    recorded = load_checkpoint(multitask_checkpoint)["training_data"]
    # the generated folder tree names no sequence: recorded as unknown, not guessed
    assert recorded == {"sources": ["folder"], "sequences": []}


def test_sequence_flag_names_only_the_rows_whose_source_is_silent(tmp_path):
    from mritumor.data.loading.prepare import with_sequence
    from mritumor.data.reading.catalog import Catalog, make_table

    rows = [
        {"image": f"{k}.png", "patient_id": str(k), "tumor_type": "glioma", "sequence": seq}
        for k, seq in enumerate(["T2", None, float("nan")])
    ]
    named = with_sequence(Catalog(make_table(rows), "manifest", tmp_path, []), "t1c+").table
    assert named["sequence"].tolist() == ["T2", "T1 post-contrast", "T1 post-contrast"]
    bare = make_table([{"image": "a.png", "patient_id": "a", "tumor_type": "glioma"}])
    assert with_sequence(Catalog(bare, "folder", tmp_path, []), "FLAIR").table["sequence"].tolist() == ["FLAIR"]  # fmt: skip


@pytest.mark.realdata
@pytest.mark.skipif(
    not (SHARED_DATA / "figshare").is_dir() or not (SHARED_DATA / "lgg").is_dir(),
    reason="../shared/data/figshare or ../shared/data/lgg absent",
)
def test_the_two_source_file_records_t1_after_contrast_for_both_sources():
    """figshare (its manifest is silent: the sources file names it) and LGG's channel 2."""
    from pathlib import Path

    from mritumor.data.reading.sources import read_sources, read_sources_file

    sources = Path(__file__).resolve().parents[1] / "benchmarks" / "sources" / "figshare_lgg.yaml"
    table = read_sources(read_sources_file(sources)).table
    for name in ("figshare", "lgg"):
        assert table_sequences(table[table["source"] == name]) == ["T1 post-contrast"], name
    assert training_data(table) == {"sources": ["figshare", "lgg"], "sequences": ["T1 post-contrast"]}  # fmt: skip
