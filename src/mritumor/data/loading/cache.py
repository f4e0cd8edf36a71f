"""Preprocessing cache: every slice decoded, padded to square, resized and normalised once.

The result is one array ``images`` (N, C, S, S) float16 in [0, 1] and ``masks`` (N, 1, S, S)
uint8, held in memory or, when memory would not hold it (or ``cache_dir`` is given), in
``.npy`` files memory-mapped from disk and keyed by the files (path, size, mtime) and the
preprocessing parameters, so a later run over the same data re-uses them. No epoch after the
first decodes an image again; datasets only index these arrays.

Slices that cannot be decoded are dropped from the catalog here and counted as problems.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mritumor.data.loading.intensity import (
    FOREGROUND_FRACTION,
    INTENSITY_METHODS,
    MIN_FOREGROUND,
    intensity_window,
)
from mritumor.data.reading import io
from mritumor.data.reading.catalog import Catalog, Problem, check_not_empty, raise_if_strict
from mritumor.resources import ResourceError, check_free_space, check_writable

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # bump when the stored layout or preprocessing changes


@dataclass(frozen=True)
class Preprocessing:
    """How a slice becomes a tensor. Part of the cache key and of every checkpoint."""

    image_size: int = 224
    channels: int = 1
    clip_low: float = 0.5  # percentiles: robust to the few extreme voxels MRI often has
    clip_high: float = 99.5
    # over which pixels the clip percentiles are taken (mritumor.data.loading.intensity): all of them,
    # or the head only (background then 0)
    intensity: str = "percentile"

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 2048:
            raise ValueError(f"image_size {self.image_size} outside 16..2048")
        if self.channels < 1:
            raise ValueError("channels must be ≥ 1")
        if self.intensity not in INTENSITY_METHODS:
            raise ValueError(
                f"intensity must be one of {INTENSITY_METHODS}, not {self.intensity!r}"
            )


def preprocess_image(image: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """(C, H, W) raw → (prep.channels, S, S) float16 in [0, 1]: each channel clipped to its
    intensity window (:mod:`mritumor.data.loading.intensity`; for ``foreground`` the background lies
    below it and becomes 0), scaled, then padded to a square and resized."""
    tensor = match_channels(
        torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), prep.channels
    )
    flat = tensor.reshape(tensor.shape[0], -1).numpy()
    lows, highs = intensity_window(flat, prep.intensity, prep.clip_low, prep.clip_high)
    low, high = torch.from_numpy(lows).view(-1, 1, 1), torch.from_numpy(highs).view(-1, 1, 1)
    # A constant channel has high == low; it maps to 0 rather than dividing by zero.
    scaled = ((tensor - low) / (high - low).clamp_min(1e-6)).clamp_(0, 1)
    return resize_square(scaled, prep.image_size, "bilinear").to(torch.float16)


def preprocess_mask(mask: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """(H, W) bool → (1, S, S) uint8 {0, 1}; nearest-neighbour so it stays binary."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))[None].float()
    return resize_square(tensor, prep.image_size, "nearest").to(torch.uint8)


def match_channels(tensor: torch.Tensor, channels: int) -> torch.Tensor:
    if tensor.shape[0] == channels:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(channels, -1, -1)
    if channels == 1:
        return tensor.mean(dim=0, keepdim=True)
    raise io.SliceReadError(f"{tensor.shape[0]} channels cannot be turned into {channels}")


def resize_square(tensor: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Zero-pad to a centred square (keeps anatomy's aspect ratio), then resize."""
    _, height, width = tensor.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    padded = F.pad(tensor, (left, side - width - left, top, side - height - top))
    if side == size:
        return padded
    options = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(padded[None], size=(size, size), mode=mode, **options)[0]


def pick_channel(image: np.ndarray, channel) -> np.ndarray:
    """The one channel a source asks for (``channel`` column of a multi-source catalog:
    LGG's post-contrast T1 for a 1-channel model), or the image unchanged (None or -1)."""
    if channel is None or pd.isna(channel) or int(channel) < 0:
        return image
    if int(channel) >= image.shape[0]:
        raise io.SliceReadError(f"channel {int(channel)} asked of an image with {image.shape[0]}")
    return image[int(channel) : int(channel) + 1]


def infer_channels(catalog: Catalog, probe: int = 8) -> int:
    """The channel count of the first decodable slices (1 for grayscale, 3 for LGG's RGB),
    after a multi-source catalog's channel choice; every source is probed."""
    table = catalog.table
    if "source" in table.columns and table["source"].nunique() > 1:
        return max(
            infer_channels(Catalog(part, catalog.source, catalog.root), probe)
            for _, part in table.groupby("source", sort=False)
        )
    counts = []
    columns = ["image", "frame", "channel"] if "channel" in table.columns else ["image", "frame"]
    for image, frame, *channel in table[columns].head(probe * 4).itertuples(index=False):
        try:
            counts.append(
                pick_channel(io.read_image(image, frame), (channel or [None])[0]).shape[0]
            )
        except io.SliceReadError:
            continue
        if len(counts) >= probe:
            break
    return max(counts) if counts else 1


class SliceCache:
    """Preprocessed slices of one catalog. Build with :meth:`build`."""

    def __init__(self, catalog: Catalog, prep: Preprocessing, images, masks, has_mask):
        self.catalog = catalog
        self.prep = prep
        self.images = images  # (N, C, S, S) float16, ndarray or memmap
        self.masks = masks  # (N, 1, S, S) uint8
        self.has_mask = has_mask  # (N,) bool

    def __len__(self) -> int:
        return len(self.catalog)

    def image(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.images[index], dtype=np.float32))

    def mask(self, index: int) -> torch.Tensor | None:
        return torch.from_numpy(np.array(self.masks[index])) if self.has_mask[index] else None

    @classmethod
    def build(
        cls,
        catalog: Catalog,
        prep: Preprocessing,
        cache_dir: str | Path | None = None,
        strict: bool = False,
        workers: int | None = None,
        progress: bool = True,
    ) -> SliceCache:
        """Decode every slice once (threads: PIL and zlib release the GIL). Undecodable slices
        are dropped from the returned cache's catalog and recorded as problems."""
        n = len(catalog)
        needed = _bytes_needed(n, prep)
        if cache_dir is None and needed > 0.5 * available_memory():
            cache_dir = default_cache_dir()
            log.info(
                "the preprocessed slices (%.1f GiB) would take more than half of the available "
                "memory; caching them on disk in %s instead (choose with --cache_dir)",
                needed / 2**30,
                cache_dir,
            )
        key = cache_key(catalog, prep)
        if cache_dir is not None:
            check_writable(cache_dir, "cache folder (--cache_dir)")
            cached = cls._load_from_disk(catalog, prep, Path(cache_dir), key)
            if cached is not None:
                log.info("re-using preprocessed cache %s", Path(cache_dir) / key)
                raise_if_strict(cached.catalog.problems[len(catalog.problems) :], strict)
                return cached
        images, masks = _allocate(n, prep, Path(cache_dir) / key if cache_dir else None)
        has_mask = np.zeros(n, dtype=bool)
        failed: dict[int, str] = {}

        def decode(position: int) -> None:
            row = catalog.table.iloc[position]
            try:
                image = pick_channel(io.read_image(row["image"], row["frame"]), row.get("channel"))
                images[position] = preprocess_image(image, prep).numpy()
                if row["mask"] is not None:
                    mask = io.read_mask(row["mask"], row["frame"])
                    if mask.shape != image.shape[1:]:
                        raise io.SliceReadError(
                            f"mask {mask.shape} and image {image.shape[1:]} differ in size"
                        )
                    masks[position] = preprocess_mask(mask, prep).numpy()
                    has_mask[position] = True
            except io.SliceReadError as error:
                failed[position] = str(error)

        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            stream = pool.map(decode, range(n))
            for _ in tqdm(
                stream, total=n, desc="Caching slices", unit="slice", disable=not progress
            ):
                pass
        problems = [
            Problem(
                f"{catalog.table.at[p, 'image']}"
                + (
                    f"[{catalog.table.at[p, 'frame']}]" if catalog.table.at[p, "frame"] >= 0 else ""
                ),
                reason,
            )
            for p, reason in sorted(failed.items())
        ]
        if problems:
            log.warning("%d slice(s) could not be decoded and were skipped", len(problems))
            for problem in problems[:10]:
                log.warning("  %s", problem)
        raise_if_strict(problems, strict)
        if cache_dir is not None:
            _save_meta(Path(cache_dir) / key, images, masks, has_mask, failed)
        cache = cls(catalog.drop_rows(sorted(failed), problems), prep, images, masks, has_mask)
        if failed:
            cache = cache._select(np.setdiff1d(np.arange(n), sorted(failed)))
        check_not_empty(cache.catalog)
        return cache

    def _select(self, positions: np.ndarray) -> SliceCache:
        # Fancy indexing copies; only happens when some slices failed to decode.
        return SliceCache(
            self.catalog,
            self.prep,
            np.asarray(self.images[positions]),
            np.asarray(self.masks[positions]),
            self.has_mask[positions],
        )

    @classmethod
    def _load_from_disk(cls, catalog, prep, cache_dir: Path, key: str) -> SliceCache | None:
        folder = cache_dir / key
        if not (folder / "meta.json").is_file():
            return None
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("rows") != len(catalog) or meta.get("format") != CACHE_FORMAT:
                return None
            images = np.load(folder / "images.npy", mmap_mode="r", allow_pickle=False)
            masks = np.load(folder / "masks.npy", mmap_mode="r", allow_pickle=False)
            has_mask = np.load(folder / "has_mask.npy", allow_pickle=False)
            failed = {int(k): v for k, v in meta["failed"].items()}
        except (OSError, ValueError, KeyError, AttributeError) as error:
            # damaged or foreign files: rebuilt from the data rather than trusted
            log.warning("disk cache %s is unreadable (%s); rebuilding it", folder, error)
            return None
        expected = (len(catalog), prep.channels, prep.image_size, prep.image_size)
        if (
            images.shape != expected
            or masks.shape[0] != len(catalog)
            or len(has_mask) != len(catalog)
        ):
            log.warning("disk cache %s does not match the data; rebuilding it", folder)
            return None
        problems = [
            Problem(str(catalog.table.at[p, "image"]), r) for p, r in sorted(failed.items())
        ]
        cache = cls(catalog.drop_rows(sorted(failed), problems), prep, images, masks, has_mask)
        return (
            cache._select(np.setdiff1d(np.arange(len(catalog)), sorted(failed)))
            if failed
            else cache
        )


def _save_meta(folder: Path, images, masks, has_mask: np.ndarray, failed: dict[int, str]) -> None:
    for array in (images, masks):
        if isinstance(array, np.memmap):
            array.flush()
    np.save(folder / "has_mask.npy", has_mask)
    meta = {
        "rows": len(has_mask),
        "failed": {str(k): v for k, v in failed.items()},
        "format": CACHE_FORMAT,
    }
    temporary = folder / "meta.json.tmp"
    temporary.write_text(json.dumps(meta))
    os.replace(temporary, folder / "meta.json")  # written last: its presence means complete


def cache_key(catalog: Catalog, prep: Preprocessing) -> str:
    """Changes whenever a file, its order, or a preprocessing parameter changes."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, _key_parameters(prep)]).encode())
    for image, frame, mask in catalog.table[["image", "frame", "mask"]].itertuples(index=False):
        for path in (image, mask):
            if path is None:
                digest.update(b"-")
                continue
            try:
                stat = os.stat(path)
                digest.update(
                    f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode("utf-8", "surrogateescape")
                )
            except OSError:
                digest.update(f"{path}|missing".encode("utf-8", "surrogateescape"))
        digest.update(str(frame).encode())
    if "channel" in catalog.table.columns:  # a source's channel choice changes the pixels
        digest.update(catalog.table["channel"].astype(str).str.cat(sep=",").encode())
    return digest.hexdigest()[:24]


def _key_parameters(prep: Preprocessing) -> dict:
    """The preprocessing part of the key. The default method is left out, so caches written
    before ``intensity`` existed (the same values, bit for bit) keep their key; the foreground
    method's constants are put in, so changing them cannot re-use stale files."""
    parameters = asdict(prep)
    if prep.intensity == "percentile":
        del parameters["intensity"]
    else:
        parameters["foreground"] = [FOREGROUND_FRACTION, MIN_FOREGROUND]
    return parameters


def _bytes_needed(n: int, prep: Preprocessing) -> int:
    return n * prep.image_size**2 * (2 * prep.channels + 1)


def default_cache_dir() -> Path:
    """Where the cache goes when it is not given and memory would not hold it."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mritumor"


def available_memory(
    meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")
) -> int:
    """Bytes this process could still take without swapping: Linux's MemAvailable (free memory
    plus reclaimable page cache; MemFree alone is near zero after reading many files), bounded
    by the container's cgroup-v2 limit (a batch job's limit is usually far below the host's
    memory). Elsewhere the free pages sysconf reports, or 8 GiB when even that is unknown."""
    available = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 8 << 30
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            available = min(available, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return available


def _allocate(n: int, prep: Preprocessing, folder: Path | None):
    """In memory, or memory-mapped ``.npy`` files in ``folder``: for those the free space is
    checked first (N × S² × (2C + 1) bytes: float16 images and uint8 masks) and then reserved,
    because writing into a memory map on a disk that fills up kills the process (SIGBUS)
    instead of raising an error."""
    shape_images = (n, prep.channels, prep.image_size, prep.image_size)
    shape_masks = (n, 1, prep.image_size, prep.image_size)
    if folder is None:
        return np.zeros(shape_images, np.float16), np.zeros(shape_masks, np.uint8)
    check_free_space(folder.parent, _bytes_needed(n, prep), "the preprocessed slice cache")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    open_memmap = np.lib.format.open_memmap
    images = open_memmap(folder / "images.npy", mode="w+", dtype=np.float16, shape=shape_images)
    masks = open_memmap(folder / "masks.npy", mode="w+", dtype=np.uint8, shape=shape_masks)
    for name in ("images.npy", "masks.npy"):
        _reserve(folder / name)
    return images, masks


def _reserve(path: Path) -> None:
    """Allocate the blocks of a sparse file now, so a full disk is an error here, not later."""
    if not hasattr(os, "posix_fallocate"):
        return
    try:
        with open(path, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, path.stat().st_size)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceError(
                f"no space left for the preprocessed slice cache {path} ({error.strerror}); "
                "free some space or choose another --cache_dir"
            ) from error
        # other errors: the file system cannot reserve space (EOPNOTSUPP, EINVAL); go on
