"""Which MR sequence a DICOM series is, from its own tags, against the sequences the model was
trained on: a model trained on T1 post-contrast slices answers a FLAIR series with the same
confidence and no idea that it should not, so the result carries a ``sequence_warning``.

The series' sequence is read from ``SeriesDescription`` / ``ProtocolName`` / ``SequenceName``
words (the names scanners and technologists write: "T1 AX POST GAD", "AX FLAIR", "T2 TSE",
"MPRAGE +C") and ``ContrastBolusAgent``; ``ScanningSequence`` IR with a T2 weighting reads as
FLAIR. A description that says nothing recognisable gives no sequence and no warning: the
check only speaks when the tags do.
"""

from __future__ import annotations

import re

from mritumor.data.reading.sequences import T1_POST, normalise

_WORDS = [  # first match wins: T1 before FLAIR ("T1 FLAIR" is GE's T1-weighted IR)
    ("T1", r"T1|MPRAGE|MP[ _-]RAGE|SPGR|BRAVO|\bTFE\b|\bVIBE\b"),
    ("FLAIR", r"FLAIR|\bDARK[ _-]?FLUID\b|\bT2[ _-]?IR\b"),
    ("DWI", r"\bDWI\b|DIFFUSION|\bTRACE\b|\bDTI\b|\bADC\b"),
    ("SWI", r"\bSWI\b|\bSWAN\b|T2\*|\bGRE\b"),
    ("T2", r"T2"),
]
# contrast said, and said absent ("PRE GAD", "NON CONTRAST", "W/O"): the latter wins
_CONTRAST = r"\bPOST\b(?![ _-]?OP)|GAD|\bGD\b|\+ ?C\b|\bC ?\+|\bT1 ?C\b|T1CE|CONTRAST|\bCE\b|\bDOTA"
_NO_CONTRAST = r"\b(PRE|NON|NO|W/?O|WITHOUT)[ _-]?(CONTRAST|GAD|GD|C\b|\+ ?C)|\bPRE\b"


def series_sequence(tags: dict) -> str | None:
    """The sequence a series' tags name (see the module docstring), or None."""
    text = " ".join(
        str(tags.get(k) or "") for k in ("SeriesDescription", "ProtocolName", "SequenceName")
    ).upper()
    said = bool(re.search(_CONTRAST, text)) or bool(tags.get("ContrastBolusAgent"))
    contrast = said and not re.search(_NO_CONTRAST, text)
    scanning = str(tags.get("ScanningSequence") or "").upper()
    for sequence, pattern in _WORDS:
        if re.search(pattern, text):
            if sequence == "T2" and "IR" in scanning:
                return "FLAIR"
            if sequence == "T1" and contrast:
                return T1_POST
            return sequence
    return T1_POST if contrast and text.strip() == "" else None


def sequence_warning(trained: list[str], tags: dict) -> str | None:
    """The warning for a series whose tags name a sequence the model was not trained on;
    None when they agree or either side is unknown."""
    found = series_sequence(tags)
    if found is None or not trained or found in trained:
        return None
    said = tags.get("SeriesDescription") or tags.get("ProtocolName") or tags.get("SequenceName")
    return (
        f"this series looks like {found} (SeriesDescription {said!r}"
        + (", contrast agent given" if tags.get("ContrastBolusAgent") else "")
        + f"); the model was trained on {', '.join(trained)} images: its answer may not hold"
    )


def trained_sequences(checkpoint: dict) -> list[str]:
    """The sequences a checkpoint's training data held (``training_data.sequences``, written
    by training since the data layer records them); [] for older checkpoints."""
    names = ((checkpoint.get("training_data") or {}).get("sequences")) or []
    return [n for n in (normalise(name) for name in names) if n]


def add_sequence_warning(record: dict, series, trained: list[str]) -> str | None:
    """Put :func:`sequence_warning` of a DICOM ``series`` (None: not a series) into ``record``
    as ``sequence_warning``; returns it."""
    warning = sequence_warning(trained, series.tags) if series is not None else None
    if warning:
        record["sequence_warning"] = warning
    return warning
