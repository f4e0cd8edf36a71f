"""benchmarks/bench_shift.py's corruptions: identity at severity 0, growing with severity,
deterministic, shape and range kept, masks turned with the image."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def bench():
    from conftest import load_benchmark

    return load_benchmark("bench_shift")


def brain_like(n: int = 4, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    head = ((x**2 + y**2) < 0.7).float()
    texture = 0.5 + 0.3 * torch.sin(7 * x) * torch.cos(5 * y)
    images = (head * texture).expand(n, 1, size, size).clone()
    masks = (((x - 0.3) ** 2 + (y - 0.1) ** 2) < 0.05).float().expand(n, 1, size, size).clone()
    return images, masks


@pytest.mark.parametrize("kind", ["gamma", "blur", "noise", "downsample", "rotation", "bias_field"])
def test_corruption_grows_with_severity(bench, kind):
    images, masks = brain_like()
    same, _ = bench.corrupt(images, masks, kind, 0)
    assert torch.equal(same, images)
    changes = []
    for severity in range(1, 6):
        out, out_masks = bench.corrupt(images, masks, kind, severity)
        assert out.shape == images.shape and out.dtype == images.dtype
        assert 0.0 <= out.min() and out.max() <= 1.0
        again, _ = bench.corrupt(images, masks, kind, severity)
        assert torch.equal(out, again)  # seeded
        changes.append((out - images).abs().mean().item())
    assert changes[0] > 0
    assert changes[-1] > 1.5 * changes[0], changes
    assert all(b >= 0.9 * a for a, b in zip(changes, changes[1:], strict=False)), changes


def test_rotation_turns_the_mask_with_the_image(bench):
    images, masks = brain_like()
    _, turned = bench.corrupt(images, masks, "rotation", 5)  # 90°
    assert torch.equal(turned, torch.rot90(masks, 1, dims=(-2, -1)))
