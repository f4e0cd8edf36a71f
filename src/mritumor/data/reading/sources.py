"""Several data sources in one catalog: ``--data_root`` given more than once, or a sources file.

Each source is read by its own reader (:func:`~mritumor.data.reading.readers.read_catalog`), then
shaped by its :class:`SourceSpec`: rows kept by column values, tumour types renamed, masks
dropped (the source then trains classification only), and one channel picked (LGG's
post-contrast T1 for a 1-channel model). The combined catalog's ``source`` column holds the
source's name (the reader's own value moves to ``origin``); patient ids and families are
prefixed with it (``lgg:TCGA_CS_4941``) so that two sources can never share a patient, and
splits are made within each source (:func:`mritumor.data.loading.splits.make_split` with
``within="source"``).

A sources file (YAML) lists the sources; relative paths are resolved against the file::

    sources:
      - data_root: ../shared/data/figshare
        name: figshare
      - data_root: ../shared/data/lgg
        name: lgg
        channel: 2                       # post-contrast T1 of (pre-contrast, FLAIR, post-contrast)
        keep: {has_tumor: [1]}           # its slices with tumour only
        types: {astrocytoma: glioma, oligoastrocytoma: glioma, oligodendroglioma: glioma}
        masks: false                     # FLAIR outlines, not the enhancing tumour
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from mritumor.data.reading.catalog import Catalog, check_not_empty
from mritumor.data.reading.sequences import normalise, picked_channel_sequence
from mritumor.errors import DataError

MULTI_SOURCE = "multi"  # Catalog.source of a combined catalog
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
_SPEC_KEYS = ("data_root", "name", "format", "channel", "types", "keep", "masks", "sequence")


@dataclass(frozen=True)
class SourceSpec:
    """One source of a multi-source run and how its rows are shaped."""

    data_root: str
    name: str | None = None  # default: the folder's (or manifest's folder's) name
    format: str | None = None  # the reader; auto-detected when None
    channel: int | None = None  # 0-based channel of every image to keep; None: all
    types: dict[str, str] = field(default_factory=dict)  # tumour type renames
    keep: dict[str, list] = field(default_factory=dict)  # column → values to keep
    masks: bool = True  # False: the source's masks are ignored (classification only)
    sequence: str | None = None  # the MR sequence of its images, when the reader cannot tell

    @property
    def resolved_name(self) -> str:
        if self.name:
            return self.name
        path = Path(self.data_root)
        return (path.parent if path.suffix.lower() == ".csv" else path).name or "source"


def source_specs(
    data_root, source_name=None, sources_file: str | Path | None = None
) -> list[SourceSpec]:
    """The sources of a run from its flags: ``--data_root`` (one path or a list),
    ``--source_name`` (one per root, optional) and ``--sources`` (a YAML file)."""
    roots = [] if data_root is None else [data_root] if isinstance(data_root, str | Path) else list(data_root)  # fmt: skip
    names = [] if source_name is None else [source_name] if isinstance(source_name, str) else list(source_name)  # fmt: skip
    if names and len(names) != len(roots):
        raise DataError(
            f"--source_name was given {len(names)} time(s) for {len(roots)} --data_root(s): give "
            "one name per --data_root, in the same order"
        )
    specs = [SourceSpec(str(r), n) for r, n in zip(roots, names or [None] * len(roots), strict=True)]  # fmt: skip
    if sources_file:
        specs += read_sources_file(sources_file)
    if not specs:
        raise DataError("no data: give --data_root (one or more times) or --sources FILE")
    return specs


def read_sources_file(path: str | Path) -> list[SourceSpec]:
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"cannot read --sources {path}: {error}") from error
    entries = content.get("sources") if isinstance(content, dict) else content
    if not isinstance(entries, list) or not entries:
        raise DataError(f"--sources {path}: expected a list of sources under 'sources:'")
    specs = []
    for number, entry in enumerate(entries, start=1):
        where = f"--sources {path}, source {number}"
        if not isinstance(entry, dict) or "data_root" not in entry:
            raise DataError(f"{where}: each source is a mapping with at least data_root")
        unknown = sorted(set(entry) - set(_SPEC_KEYS))
        if unknown:
            raise DataError(f"{where}: unknown key(s) {unknown}; known: {', '.join(_SPEC_KEYS)}")
        root = Path(str(entry["data_root"]))
        root = root if root.is_absolute() else path.parent / root
        channel = entry.get("channel")
        if channel is not None and (not isinstance(channel, int) or channel < 0):
            raise DataError(f"{where}: channel must be a 0-based channel index, not {channel!r}")
        keep = entry.get("keep") or {}
        if not isinstance(keep, dict):
            raise DataError(f"{where}: keep must map column names to lists of values")
        types = entry.get("types") or {}
        if not isinstance(types, dict):
            raise DataError(f"{where}: types must map tumour types to new names")
        specs.append(
            SourceSpec(
                str(root),
                entry.get("name"),
                entry.get("format"),
                channel,
                {str(k): str(v) for k, v in types.items()},
                {str(k): v if isinstance(v, list) else [v] for k, v in keep.items()},
                bool(entry.get("masks", True)),
                entry.get("sequence"),
            )
        )
    return specs


def read_sources(specs: list[SourceSpec], strict: bool = False) -> Catalog:
    """One catalog of every source (see the module doc)."""
    from mritumor.data.reading.readers import read_catalog

    names = [spec.resolved_name for spec in specs]
    for name in names:
        if not _NAME.match(name):
            raise DataError(
                f"source name {name!r}: use letters, digits, '_', '-' or '.' (at most 40)"
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"source name(s) {repeated} given twice: name each source (--source_name)")
    tables, problems = [], []
    for spec, name in zip(specs, names, strict=True):
        catalog = read_catalog(spec.data_root, format=spec.format, strict=strict)
        tables.append(shape_source(catalog.table, spec, name))
        problems += catalog.problems
    table = pd.concat(tables, ignore_index=True)
    root = Path(specs[0].data_root).absolute()
    combined = Catalog(table, MULTI_SOURCE, root, problems)
    check_not_empty(combined)
    return combined


def shape_source(table: pd.DataFrame, spec: SourceSpec, name: str) -> pd.DataFrame:
    """One source's rows, kept, renamed, masked and channel-picked as its spec says."""
    table = table.copy()
    for column, values in spec.keep.items():
        if column not in table.columns:
            raise DataError(
                f"source {name}: keep names column {column!r}, which it lacks "
                f"(columns: {', '.join(map(str, table.columns))})"
            )
        wanted = {str(v) for v in values}
        table = table[table[column].astype(str).isin(wanted)]
    if table.empty:
        raise DataError(f"source {name}: no rows left after keep {spec.keep}")
    table["tumor_type"] = table["tumor_type"].map(lambda t: spec.types.get(t, t))
    if not spec.masks:
        table["mask"] = None
    table["channel"] = -1 if spec.channel is None else spec.channel
    if spec.channel is not None and "channels" in table.columns:  # the picked channel's sequence
        table["sequence"] = [picked_channel_sequence(c, spec.channel) for c in table["channels"]]
    if spec.sequence is not None:
        table["sequence"] = normalise(spec.sequence)
    table["origin"] = table["source"]
    table["source"] = name
    family = table["patient_family"] if "patient_family" in table.columns else table["patient_id"]
    table["patient_family"] = [
        f"{name}:{f if isinstance(f, str) and f else p}"
        for f, p in zip(family, table["patient_id"], strict=True)
    ]
    table["patient_id"] = [f"{name}:{p}" for p in table["patient_id"]]
    return table.reset_index(drop=True)


def source_balanced_weights(sources, shares: dict[str, float] | None = None):
    """Sampling weight of every row so that sources are drawn in proportion to ``shares``
    (default: equal), whatever their sizes: row weight = share of its source / its row count."""
    import numpy as np

    sources = np.asarray(sources).astype(str)
    names, counts = np.unique(sources, return_counts=True)
    shares = shares or dict.fromkeys(names.tolist(), 1.0)
    missing = sorted(set(names) - set(shares))
    if missing:
        raise DataError(f"no sampling share given for source(s) {missing}")
    total = sum(shares[n] for n in names)
    per_row = {n: shares[n] / total / c for n, c in zip(names, counts, strict=True)}
    return np.array([per_row[s] for s in sources], dtype=np.float64)
