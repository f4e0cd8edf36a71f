"""From ``--data_root`` to training-ready data: read → cache → split, in one call.

Every training command goes through :func:`prepare_data` (with its configuration:
:func:`prepare_data_for`), so they all read, skip, split and record the split the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mritumor import runfiles
from mritumor.data.loading.cache import Preprocessing, SliceCache, infer_channels
from mritumor.data.loading.labels import LabelSpace
from mritumor.data.loading.splits import Split, load_split, make_split
from mritumor.data.reading.catalog import Catalog
from mritumor.data.reading.readers import read_catalog
from mritumor.data.reading.sequences import normalise
from mritumor.data.reading.sources import MULTI_SOURCE, read_sources, source_specs
from mritumor.errors import DataError

if TYPE_CHECKING:
    from mritumor.config import DataConfig

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    catalog: Catalog  # only the slices that decoded
    cache: SliceCache
    split: Split
    labels: LabelSpace  # from the training part

    def patients(self, part: str) -> list[str]:
        return self.split.part(part)


def is_multi_source(data_root, source_name=None, sources=None) -> bool:
    """Whether the flags ask for the multi-source reader (several roots, names or a file)."""
    several = not isinstance(data_root, str | Path | None) and len(data_root) > 1
    return bool(several or source_name or sources)


def read_data(
    data_root, format: str | None = None, strict: bool = False, source_name=None, sources=None
) -> Catalog:
    """The catalog of ``--data_root`` (one root: its reader, as always; several roots, names or
    a ``--sources`` file: :func:`mritumor.data.reading.sources.read_sources`)."""
    if not is_multi_source(data_root, source_name, sources):
        root = data_root if isinstance(data_root, str | Path) else data_root[0]
        return read_catalog(root, format=format, strict=strict)
    if format:
        raise DataError(
            "--format applies to one --data_root; with several sources give each its format "
            "in a --sources file"
        )
    return read_sources(source_specs(data_root, source_name, sources), strict=strict)


def prepare_data(
    data_root,
    format: str | None = None,
    strict: bool = False,
    image_size: int = 224,
    channels: int | None = None,
    intensity: str = "percentile",
    cache_dir: str | Path | None = None,
    split_file: str | Path | None = None,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
    group_by: str | None = None,
    outdir: str | Path | None = None,
    progress: bool = True,
    source_name=None,
    sources: str | Path | None = None,
    sequence: str | None = None,
) -> PreparedData:
    catalog = with_sequence(read_data(data_root, format, strict, source_name, sources), sequence)
    channels = channels or infer_channels(catalog)
    prep = Preprocessing(image_size=image_size, channels=channels, intensity=intensity)
    cache = SliceCache.build(catalog, prep, cache_dir=cache_dir, strict=strict, progress=progress)
    catalog = cache.catalog
    if split_file:
        split = load_split(split_file, catalog.table)
    else:
        within = "source" if catalog.source == MULTI_SOURCE else None
        split = make_split(catalog.table, val_frac, test_frac, seed, group_by, within)
    labels = LabelSpace.from_table(catalog.subset(split.train).table)
    log.info(
        "data: %d slices, %d patients (train %d, val %d, test %d; %s); %d item(s) skipped",
        len(catalog),
        len(catalog.patients),
        len(split.train),
        len(split.val),
        len(split.test),
        split.strategy,
        len(catalog.problems),
    )
    if outdir is not None:
        split.save(Path(outdir) / runfiles.SPLIT)
    return PreparedData(catalog, cache, split, labels)


def prepare_data_for(
    data: DataConfig, outdir: str | Path | None = None, progress: bool = True
) -> PreparedData:
    """:func:`prepare_data` with a :class:`~mritumor.config.DataConfig`'s source,
    preprocessing and split; ``outdir`` receives ``split.json`` (None: not written)."""
    if data.data_root is None and not data.sources:
        raise ValueError("DataConfig.data_root (or sources) is required")
    return prepare_data(
        data.data_root,
        format=data.format,
        strict=data.strict,
        image_size=data.image_size,
        channels=data.channels,
        intensity=data.intensity,
        cache_dir=data.cache_dir,
        split_file=data.split_file,
        val_frac=data.val_frac,
        test_frac=data.test_frac,
        seed=data.effective_split_seed,
        group_by=data.group_by,
        outdir=outdir,
        progress=progress,
        source_name=data.source_name,
        sources=data.sources,
        sequence=data.sequence,
    )


def with_sequence(catalog: Catalog, sequence: str | None) -> Catalog:
    """``--sequence``: the MR sequence of the rows whose source does not name one (a folder
    tree, a manifest without a sequence column), recorded in the checkpoint and checked by
    predict against a DICOM series' own tags."""
    if sequence is None:
        return catalog
    table = catalog.table
    known = table["sequence"] if "sequence" in table.columns else None
    table["sequence"] = [
        given if known is not None and normalise(given) else normalise(sequence)
        for given in (known if known is not None else [None] * len(table))
    ]
    return catalog
