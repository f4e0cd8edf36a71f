"""Preprocessing cache: same tensors as decoding directly, disk re-use, invalidation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_png
from mritumor.data.loading import cache as cache_module
from mritumor.data.loading.cache import (
    Preprocessing,
    SliceCache,
    available_memory,
    cache_key,
    preprocess_image,
    resize_square,
)
from mritumor.data.reading import io
from mritumor.data.reading.readers import read_catalog


def test_cached_tensors_equal_direct_preprocessing(folder_tree: Path):
    catalog = read_catalog(folder_tree)
    prep = Preprocessing(image_size=32, channels=1)
    cache = SliceCache.build(catalog, prep, progress=False)
    assert cache.images.shape == (36, 1, 32, 32) and cache.images.dtype == np.float16
    for row in (0, 17, 35):
        image = catalog.table.at[row, "image"]
        direct = preprocess_image(io.read_image(image), prep).float()
        torch.testing.assert_close(cache.image(row), direct, rtol=0, atol=0)
        mask = cache.mask(row)
        assert mask.dtype == torch.uint8 and set(mask.unique().tolist()) <= {0, 1}
        # the mask marks the bright square: mean intensity inside ≫ outside
        inside = cache.image(row)[mask.bool()].mean()
        assert inside > cache.image(row)[~mask.bool()].mean() + 0.3


def test_normalisation_is_robust_and_handles_constant_images():
    prep = Preprocessing(image_size=16, channels=1)
    image = np.linspace(0, 1000, 32 * 32, dtype=np.float32).reshape(1, 32, 32)
    image[0, 0, 0] = 1e9  # one extreme voxel must not squash the rest
    out = preprocess_image(image, prep).float()
    assert 0 <= out.min() and out.max() <= 1 and out.std() > 0.25
    constant = preprocess_image(np.full((1, 20, 30), 7.0, np.float32), prep)
    assert torch.count_nonzero(constant) == 0 and torch.isfinite(constant.float()).all()


def test_resize_pads_to_square_preserving_aspect():
    tall = torch.ones(1, 40, 20)
    out = resize_square(tall, 40, "nearest")
    assert out.shape == (1, 40, 40)
    assert out[0, :, :10].sum() == 0 and out[0, :, 10:30].min() == 1 and out[0, :, 30:].sum() == 0


def test_grayscale_is_repeated_for_three_channel_models(folder_tree: Path):
    catalog = read_catalog(folder_tree)
    cache = SliceCache.build(catalog, Preprocessing(image_size=24, channels=3), progress=False)
    image = cache.image(0)
    assert image.shape == (3, 24, 24)
    torch.testing.assert_close(image[0], image[2])


def test_disk_cache_is_reused_and_invalidated(folder_tree: Path, tmp_path: Path, monkeypatch):
    catalog = read_catalog(folder_tree)
    prep = Preprocessing(image_size=32, channels=1)
    first = SliceCache.build(catalog, prep, cache_dir=tmp_path / "c", progress=False)
    decoded = []
    original = io.read_image
    monkeypatch.setattr(io, "read_image", lambda *a, **k: decoded.append(a) or original(*a, **k))
    second = SliceCache.build(catalog, prep, cache_dir=tmp_path / "c", progress=False)
    assert decoded == []  # nothing decoded on the second pass
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(second.images))
    # another image size, or a changed file, gives another key
    assert cache_key(catalog, Preprocessing(image_size=48, channels=1)) != cache_key(catalog, prep)
    key_before = cache_key(catalog, prep)
    path = Path(catalog.table.at[0, "image"])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert cache_key(read_catalog(folder_tree), prep) != key_before
    SliceCache.build(read_catalog(folder_tree), prep, cache_dir=tmp_path / "c", progress=False)
    assert len(decoded) == 36  # changed mtime → rebuilt


def test_cache_goes_to_disk_when_memory_would_not_hold_it(
    folder_tree: Path, tmp_path: Path, monkeypatch
):
    catalog = read_catalog(folder_tree)
    prep = Preprocessing(image_size=32, channels=1)
    needed = len(catalog) * 32 * 32 * 3  # float16 images + uint8 masks
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cache_module, "available_memory", lambda: 2 * needed + 2)
    in_memory = SliceCache.build(catalog, prep, progress=False)
    assert not isinstance(in_memory.images, np.memmap)
    assert not (tmp_path / "mritumor").exists()
    monkeypatch.setattr(cache_module, "available_memory", lambda: 2 * needed - 2)
    on_disk = SliceCache.build(catalog, prep, progress=False)
    assert isinstance(on_disk.images, np.memmap)
    assert (tmp_path / "mritumor" / cache_key(catalog, prep) / "images.npy").is_file()
    np.testing.assert_array_equal(np.asarray(on_disk.images), in_memory.images)


def test_available_memory_reads_meminfo_and_the_cgroup_limit(tmp_path: Path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000 kB\nMemFree: 100 kB\nMemAvailable: 5000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert available_memory(meminfo, cgroup) == 5000 * 1024  # no cgroup files: MemAvailable
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("1000\n")
    assert available_memory(meminfo, cgroup) == 5000 * 1024  # unlimited
    (cgroup / "memory.max").write_text("3000000\n")
    assert available_memory(meminfo, cgroup) == 3000000 - 1000  # the job's limit binds
    (cgroup / "memory.current").write_text("4000000\n")
    assert available_memory(meminfo, cgroup) == 0


def test_failed_slices_are_remembered_by_the_disk_cache(folder_tree: Path, tmp_path: Path):
    bad = folder_tree / "meningioma" / "meningioma-P0" / "slice_9.png"
    bad.write_bytes(b"\x89PNG broken")
    catalog = read_catalog(folder_tree)
    prep = Preprocessing(image_size=32, channels=1)
    first = SliceCache.build(catalog, prep, cache_dir=tmp_path, progress=False)
    second = SliceCache.build(catalog, prep, cache_dir=tmp_path, progress=False)
    for cache in (first, second):
        assert len(cache) == len(catalog) - 1
        assert [Path(p.path).name for p in cache.catalog.problems] == ["slice_9.png"]
        assert bad.as_posix() not in set(cache.catalog.table["image"])
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(second.images))


def test_three_channel_rgb_slices(tmp_path: Path):
    rng = np.random.default_rng(0)
    for p in range(2):
        write_png(
            tmp_path / "t" / f"P{p}" / "a.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
        )
    catalog = read_catalog(tmp_path)
    cache = SliceCache.build(catalog, Preprocessing(image_size=16, channels=3), progress=False)
    assert cache.image(0).shape == (3, 16, 16)
    with pytest.raises(ValueError):
        Preprocessing(image_size=8)
