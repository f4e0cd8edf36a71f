"""The MR sequence of each slice, as the sources say it, so that a checkpoint can record what
it was trained on (``training_data.sequences``) and ``predict`` can warn when a DICOM series
is another sequence. Figshare is T1 after contrast; LGG's images stack (pre-contrast, FLAIR,
post-contrast) and a picked channel is that one sequence; a manifest may carry a ``sequence``
column (external_dev: T1, T1C+, T2); a folder tree says nothing (unknown)."""

from __future__ import annotations

import pandas as pd

T1_POST = "T1 post-contrast"
# the names readers and manifests use for the same sequences → one name each
ALIASES = {
    "t1c+": T1_POST,
    "t1c": T1_POST,
    "t1ce": T1_POST,
    "t1gd": T1_POST,
    "t1 post-contrast": T1_POST,
    "post-contrast": T1_POST,
    "t1": "T1",
    "pre-contrast": "T1",
    "t2": "T2",
    "flair": "FLAIR",
    "t2-flair": "FLAIR",
}


def normalise(name) -> str | None:
    """A sequence name as a reader or manifest writes it → the name used here (None: unknown)."""
    if name is None or (isinstance(name, float) and name != name) or not str(name).strip():
        return None
    text = str(name).strip()
    return ALIASES.get(text.lower(), text)


def picked_channel_sequence(channels, channel: int | None) -> str | None:
    """The sequence of channel ``channel`` of a row whose ``channels`` column names its image's
    channels ("pre-contrast,FLAIR,post-contrast"); all of them, joined, when none is picked."""
    names = [n.strip() for n in str(channels).split(",")] if isinstance(channels, str) else []
    if not names:
        return None
    if channel is None or channel < 0:
        return " + ".join(filter(None, map(normalise, names))) or None
    return normalise(names[channel]) if channel < len(names) else None


def table_sequences(table: pd.DataFrame) -> list[str]:
    """The sorted, distinct sequences of a catalog table's rows ([] when none is known)."""
    if "sequence" not in table.columns:
        return []
    return sorted({s for s in map(normalise, table["sequence"]) if s})


def training_data(table: pd.DataFrame) -> dict:
    """What a checkpoint records of its training rows: their sources and MR sequences."""
    sources = sorted(table["source"].astype(str).unique()) if "source" in table.columns else []
    return {"sources": sources, "sequences": table_sequences(table)}
