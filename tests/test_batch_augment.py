"""The batched, device-side augmentation and loaders against the torchvision/MONAI reference.

The reference (``augment_reference.py``) is the per-sample pipeline assembled from library ops,
an implementation independent of ``BatchAugment`` (which ``mritumor.data.augment.transforms`` now wraps,
so comparing with ``build_transform`` would compare BatchAugment with itself).

Distribution tests draw N = 400 augmentations of one fixed phantom with each path and compare
per-sample statistics. Continuous statistics: two-sample Kolmogorov-Smirnov test at
alpha = 1e-3 (for n = m = 400 the critical distance is 1.95 * sqrt(2 / 400) = 0.138 in CDF,
i.e. a location shift of roughly a third of the statistic's spread is detected) and a Welch
z-test of the means at |z| < 4. Rates (flips, empty masks): two-proportion z-test at |z| < 4
(Monte-Carlo standard error of a difference of two rates near 0.5 is sqrt(0.5 / 400) = 0.035,
so differences above ~0.14 fail). Seeds are fixed, so the tests are deterministic; every
comparison has a negative control showing the same check rejects a deliberately wrong config.
"""

from __future__ import annotations

import inspect
import tokenize
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from augment_reference import ReferenceAugment, down_up, reference_transform
from mritumor.data.augment import batch_augment as ba
from mritumor.data.augment.batch_augment import AugmentParams, BatchAugment, build_batch_augment
from mritumor.data.augment.transforms import SHIFT_CONFIG, SSL_CONFIG, AugmentConfig
from mritumor.data.loading import device_data as dd
from mritumor.data.loading.cache import Preprocessing, SliceCache
from mritumor.data.loading.datasets import SliceDataset
from mritumor.data.loading.device_data import DevicePairLoader, DeviceSliceLoader, fits_on_device
from mritumor.data.loading.labels import LabelSpace
from mritumor.data.reading.catalog import Catalog

N = 400
SIZE = 40
CUDA = torch.cuda.is_available()

NO_GEOMETRY = dict(
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    hflip_p=0.0,
    vflip_p=0.0,
    rotate_degrees=0.0,
    translate=0.0,
    scale=(1.0, 1.0),
)
NO_INTENSITY = dict(gamma_p=0.0, noise_p=0.0, blur_p=0.0, bias_field_p=0.0)


def only(**kwargs) -> AugmentConfig:
    return AugmentConfig(**{**NO_GEOMETRY, **NO_INTENSITY, **kwargs})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: intra-op threads only contend (10x slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ phantoms and statistics


def _pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x) normalised pixel-centre coordinates in (-1, 1)."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    return torch.meshgrid(centres, centres, indexing="ij")


def head_phantom(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured elliptic 'head' on black with a bright tumour in the left hemisphere and its
    mask: left/right asymmetric, so flips are visible in the mask's centre of mass."""
    y, x = _pixel_grid(size)
    head = (x / 0.85) ** 2 + (y / 0.95) ** 2 < 1
    texture = 0.45 + 0.1 * torch.sin(9 * x) * torch.cos(7 * y) + 0.1 * y
    tumour = (x + 0.35) ** 2 + (y + 0.1) ** 2 < 0.25**2
    image = torch.where(head, texture, 0.0)
    image = torch.where(tumour, 0.95, image)
    return image[None], tumour.to(torch.uint8)[None]


def texture_phantom(size: int = SIZE) -> torch.Tensor:
    """Mid-grey, high-frequency texture in [0.2, 0.8]: every intensity op changes it visibly and
    the noise is (almost) never clipped."""
    y, x = _pixel_grid(size)
    return (0.5 + 0.2 * torch.sin(25 * x) * torch.cos(19 * y) + 0.1 * x * y)[None]


def reference_draws(config, image, mask=None, kind="train", n=N, seed=0):
    transform = reference_transform(kind, image.shape[-1], config)
    torch.manual_seed(seed)
    pairs = [transform(image, mask) for _ in range(n)]
    masks = torch.stack([m for _, m in pairs]) if mask is not None else None
    return torch.stack([i for i, _ in pairs]), masks


def batch_draws(config, image, mask=None, kind="train", n=N, seed=1):
    augment = BatchAugment(config, image.shape[-1], kind)
    images = image[None].expand(n, -1, -1, -1)
    masks = mask[None].expand(n, -1, -1, -1) if mask is not None else None
    return augment(images, masks, generator=torch.Generator().manual_seed(seed))


def geometry_stats(images: torch.Tensor, masks: torch.Tensor, original: torch.Tensor) -> dict:
    """Per-sample statistics of augmented head phantoms."""
    area = masks.flatten(1).sum(1).double()
    y, x = _pixel_grid(masks.shape[-1])
    kept = area > 0
    safe = area.clamp_min(1)
    com_x = (masks[:, 0] * x).flatten(1).sum(1) / safe
    com_y = (masks[:, 0] * y).flatten(1).sum(1) / safe
    y0 = (original[0] * _pixel_grid(original.shape[-1])[0]).sum() / original.sum()
    x0 = (original[0] * _pixel_grid(original.shape[-1])[1]).sum() / original.sum()
    shift = torch.hypot(com_x.abs() - x0.abs(), com_y - y0)  # flip-independent COM shift
    return {
        "mean": images.mean(dim=(1, 2, 3)),
        "std": images.std(dim=(1, 2, 3)),
        "area_kept": area / original.sum(),
        "com_shift": shift[kept],
        "com_y": com_y[kept],
        "flipped": (com_x > 0)[kept],
        "empty": ~kept,
    }


def intensity_stats(images: torch.Tensor, original: torch.Tensor) -> dict:
    difference = images - original

    def quantised(values: torch.Tensor) -> torch.Tensor:
        # 1e-5 is far below the Monte-Carlo resolution; float noise must not count as an effect.
        return torch.round(values * 1e5) / 1e5

    return {
        "mean": images.mean(dim=(1, 2, 3)),
        "change_std": quantised(difference.std(dim=(1, 2, 3))),
        "change_abs": quantised(difference.abs().mean(dim=(1, 2, 3))),
    }


def compare(first: dict, second: dict) -> dict[str, str]:
    """Name -> reason for every statistic whose two samples differ (see the module doc)."""
    failures = {}
    for name, a in first.items():
        a, b = a.double().numpy(), second[name].double().numpy()
        if a.dtype == bool or name in ("flipped", "empty"):
            pa, pb = a.mean(), b.mean()
            pooled = (a.sum() + b.sum()) / (len(a) + len(b))
            se = np.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / len(a) + 1 / len(b)))
            if abs(pa - pb) / se > 4:
                failures[name] = f"rate {pa:.3f} vs {pb:.3f}"
            continue
        ks = stats.ks_2samp(a, b)
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        z = (a.mean() - b.mean()) / max(se, 1e-12)
        if ks.pvalue < 1e-3 or abs(z) > 4:
            failures[name] = (
                f"KS p={ks.pvalue:.2g}, mean {a.mean():.4f} vs {b.mean():.4f} z={z:.1f}"
            )
    return failures


# ------------------------------------------------------------------ distributions


@pytest.fixture(scope="module")
def head_reference():
    image, mask = head_phantom()
    images, masks = reference_draws(AugmentConfig(), image, mask)
    return image, mask, geometry_stats(images, masks, mask)


def test_full_pipeline_matches_reference_distribution(head_reference):
    image, mask, expected = head_reference
    images, masks = batch_draws(AugmentConfig(), image, mask)
    batched = geometry_stats(images, masks, mask)
    assert compare(expected, batched) == {}
    assert 0.3 < batched["flipped"].double().mean() < 0.7  # the check has something to see


@pytest.mark.parametrize(
    ("wrong", "detected"),
    [
        (dict(hflip_p=0.0), "flipped"),
        (dict(crop_scale=(0.4, 0.7)), "area_kept"),
        (dict(rotate_degrees=30.0, translate=0.15), "com_shift"),
    ],
)
def test_full_pipeline_comparison_detects_a_wrong_config(head_reference, wrong, detected):
    image, mask, expected = head_reference
    images, masks = batch_draws(replace(AugmentConfig(), **wrong), image, mask)
    assert detected in compare(expected, geometry_stats(images, masks, mask))


INTENSITY_CASES = {
    "gamma": only(gamma_p=0.5),
    "noise": only(noise_p=0.5),
    "blur": only(blur_p=0.5),
    "bias_field": only(bias_field_p=0.5),
    "lowres": only(lowres_p=0.5),
}
WRONG_INTENSITY = {
    "gamma": dict(gamma=(1.2, 2.0)),
    "noise": dict(noise_std=0.04),
    "blur": dict(blur_sigma=(0.5, 1.0)),
    "bias_field": dict(bias_field_coeff=(-0.2, 0.2)),
    "lowres": dict(lowres_scale=(0.5, 1.0)),
}


@pytest.mark.parametrize("op", sorted(INTENSITY_CASES))
def test_each_intensity_op_alone_matches_reference_distribution(op):
    config, image = INTENSITY_CASES[op], texture_phantom()
    expected = intensity_stats(reference_draws(config, image, n=300)[0], image)
    batched = intensity_stats(batch_draws(config, image, n=300)[0], image)
    assert compare(expected, batched) == {}
    assert (batched["change_abs"] > 1e-4).double().mean() > 0.3  # the op did act
    wrong = intensity_stats(batch_draws(replace(config, **WRONG_INTENSITY[op]), image)[0], image)
    assert compare(expected, wrong), f"a wrong {op} config went unnoticed"


def test_shift_config_matches_reference_distribution():
    image, mask = head_phantom()
    reference = reference_draws(SHIFT_CONFIG, image, mask)
    batched = batch_draws(SHIFT_CONFIG, image, mask)
    reference_stats = {**geometry_stats(*reference, mask), **intensity_stats(reference[0], image)}
    batched_stats = {**geometry_stats(*batched, mask), **intensity_stats(batched[0], image)}
    assert compare(reference_stats, batched_stats) == {}
    # Negative control: without the 90-degree rotations the tumour's height is another law.
    unrotated = batch_draws(replace(SHIFT_CONFIG, rot90_p=0.0), image, mask)
    assert "com_y" in compare(geometry_stats(*reference, mask), geometry_stats(*unrotated, mask))


# ------------------------------------------------------------------ exact parametrisation


def test_crop_sampler_reproduces_random_resized_crop_distribution():
    config = AugmentConfig()
    reference = v2.RandomResizedCrop(SIZE, scale=config.crop_scale, ratio=config.crop_ratio)
    torch.manual_seed(0)
    flat = [torch.zeros(1, 48, 56)]
    cpu = np.array([list(reference.make_params(flat).values()) for _ in range(2000)])
    batched = ba.sample_crop_boxes(
        2000, (48, 56), config.crop_scale, config.crop_ratio, generator=torch.Generator()
    ).numpy()
    for column in range(4):  # top, left, height, width: integers of the same law
        assert stats.ks_2samp(cpu[:, column], batched[:, column]).pvalue > 1e-3
    assert np.all(batched == np.round(batched))
    assert np.all(batched[:, 0] + batched[:, 2] <= 48) and np.all(
        batched[:, 1] + batched[:, 3] <= 56
    )
    # Nothing fits: both fall back to the same central crop.
    reference = v2.RandomResizedCrop(SIZE, scale=(0.9, 1.0), ratio=(2.0, 3.0))
    expected = list(reference.make_params([torch.zeros(1, 40, 40)]).values())
    fallback = ba.sample_crop_boxes(5, (40, 40), (0.9, 1.0), (2.0, 3.0))
    assert fallback.tolist() == [expected] * 5


def _reference_geometry(image, mask, crop, hflip, vflip, angle, translate, scale):
    """The reference's torchvision chain with explicit parameters (nearest affine, as v2.RandomAffine). Output
    size = input size, as for cached slices: crops are upsampled, so antialiasing (which
    grid_sample lacks) plays no part."""
    size = [image.shape[-1]] * 2
    out = TF.resized_crop(image, *crop, size, antialias=True)
    out_mask = TF.resized_crop(mask, *crop, size, interpolation=InterpolationMode.NEAREST_EXACT)
    if hflip:
        out, out_mask = TF.horizontal_flip(out), TF.horizontal_flip(out_mask)
    if vflip:
        out, out_mask = TF.vertical_flip(out), TF.vertical_flip(out_mask)
    affine = dict(angle=angle, translate=list(translate), scale=scale, shear=[0.0, 0.0], fill=0)
    return TF.affine(out, **affine), TF.affine(out_mask, **affine)


GEOMETRY_CASES = [
    ((0, 0, 48, 48), False, False, 0.0, (0, 0), 1.0),
    ((5, 7, 38, 40), True, False, 0.0, (0, 0), 1.0),
    ((3, 9, 40, 36), True, True, 8.0, (2, -3), 1.07),
    ((10, 2, 35, 42), False, True, -10.0, (-2, 1), 0.9),
]


@pytest.mark.parametrize("case", GEOMETRY_CASES)
def test_composed_matrix_equals_the_reference_geometry_chain(case):
    crop, hflip, vflip, angle, translate, scale = case
    y, x = _pixel_grid(48)
    image = (0.5 + 0.3 * torch.sin(2.5 * x + 0.5) * torch.cos(1.7 * y - 0.3) + 0.15 * x)[None]
    mask = ((x - 0.3) ** 2 + (y + 0.2) ** 2 < 0.15).to(torch.uint8)[None]
    expected, expected_mask = _reference_geometry(image, mask, *case)
    params = AugmentParams(
        torch.tensor([crop], dtype=torch.float32),
        torch.tensor([hflip]),
        torch.tensor([vflip]),
        torch.tensor([angle]),
        torch.tensor([translate], dtype=torch.float32),
        torch.tensor([scale]),
    )
    out, out_mask = BatchAugment(AugmentConfig(), 48).apply(image[None], mask[None], params)
    # Zero fill exactly where torchvision's affine fills; masks agree but for edge pixels.
    assert torch.equal(out[0] == 0, expected == 0)
    assert (out_mask[0] != expected_mask).double().mean() < 0.02
    # Inside (away from the crop border) the values agree to the reference's nearest-neighbour
    # snapping of the affine: half a pixel of this image's gradient (~0.016).
    inside = (slice(None), slice(2, -2), slice(2, -2))
    valid = expected[inside] > 0
    assert (out[0][inside] - expected[inside])[valid].abs().max() < 0.02
    if angle == 0:  # crop and flips only: no nearest step in the reference, so (almost) exact
        assert (out[0][inside] - expected[inside]).abs().max() < 1e-5


def test_intensity_ops_equal_monai_and_torchvision_for_given_parameters():
    from monai.transforms import AdjustContrast, RandBiasField

    generator = torch.Generator().manual_seed(3)
    images = 0.1 + 0.8 * torch.rand(3, 2, 20, 24, generator=generator)
    coeff = torch.rand(3, 10, generator=generator) * 0.2 - 0.1
    field = ba.bias_field(coeff, 3, (20, 24))
    gamma = torch.tensor([0.7, 1.0, 1.4])
    adjusted = ba.adjust_gamma(images, gamma)
    sigma = torch.tensor([0.1, 0.5, 1.0])
    blurred = ba.gaussian_blur(images, ba.gaussian_kernels(sigma, 5))
    for b in range(3):
        monai_field = RandBiasField(degree=3)._generate_random_field([20, 24], 3, coeff[b].tolist())
        assert np.allclose(field[b, 0].numpy(), monai_field, atol=1e-6)
        monai_gamma = AdjustContrast(float(gamma[b]))(images[b]).as_tensor()
        assert torch.allclose(adjusted[b], monai_gamma, atol=1e-6)
        reference = TF.gaussian_blur(images[b], [5, 5], [float(sigma[b])] * 2)
        assert torch.allclose(blurred[b], reference, atol=1e-6)
        # A batch of one takes the shifted-sum path (the per-sample wrapper's): same pixels.
        alone = ba.gaussian_blur(images[b : b + 1], ba.gaussian_kernels(sigma[b : b + 1], 5))
        assert torch.allclose(alone[0], reference, atol=1e-6)


def _params(batch: int, size: int, **fields) -> AugmentParams:
    """Identity geometry for ``batch`` samples of ``size``, with ``fields`` replaced."""
    zeros = torch.zeros(batch)
    crop = torch.tensor([[0.0, 0.0, size, size]]).repeat(batch, 1)
    params = AugmentParams(
        crop, zeros.bool(), zeros.bool(), zeros, torch.zeros(batch, 2), zeros + 1
    )
    for name, value in fields.items():
        setattr(params, name, value)
    return params


def test_quarter_turns_equal_torch_rot90_after_the_flips():
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(8, 2, 40, 40, generator=generator)
    masks = (torch.rand(8, 1, 40, 40, generator=generator) > 0.5).to(torch.uint8)
    turns = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    hflip = torch.tensor([False] * 4 + [True] * 4)
    params = _params(8, 40, rot90=turns, hflip=hflip)
    out, out_masks = BatchAugment(only(rot90_p=1.0), 40).apply(images, masks, params)
    for b in range(8):
        image, mask = (images[b].flip(-1), masks[b].flip(-1)) if hflip[b] else (images[b], masks[b])
        k = int(turns[b])
        assert torch.allclose(out[b], torch.rot90(image, k, dims=(-2, -1)), atol=1e-5)
        assert torch.equal(out_masks[b], torch.rot90(mask, k, dims=(-2, -1)))


def test_rot90_sends_a_corner_blob_to_each_corner_with_the_right_frequencies():
    image = torch.zeros(1, SIZE, SIZE)
    image[:, 2:12, 3:11] = 0.9  # top left
    mask = (image > 0).to(torch.uint8)
    # Where each number of quarter turns puts the blob, from torch.rot90 itself.
    corners = [
        (torch.rot90(image, k, dims=(-2, -1))[0] > 0).nonzero().float().mean(0) > SIZE / 2
        for k in range(4)
    ]
    assert len({tuple(c.tolist()) for c in corners}) == 4

    def counts(rot90_p: float) -> np.ndarray:
        images, masks = batch_draws(only(rot90_p=rot90_p), image, mask, n=1200)
        tally = np.zeros(4)
        for out, out_mask in zip(images, masks, strict=True):
            pixels = (out[0] > 0.45).nonzero().float()
            assert torch.equal((out_mask[0] == 1).nonzero().float(), pixels)  # the mask follows
            side = pixels.mean(0) > SIZE / 2
            tally[[k for k in range(4) if torch.equal(side, corners[k])]] += 1
        assert tally.sum() == len(images)  # every blob landed in exactly one of the corners
        return tally

    expected = np.array([0.5, 1 / 6, 1 / 6, 1 / 6]) * 1200  # unrotated, 90, 180, 270 degrees
    assert stats.chisquare(counts(0.5), expected).pvalue > 1e-3
    # Negative control: turns uniform over all four (rot90_p = 0.75) is told apart.
    assert stats.chisquare(counts(0.75), expected).pvalue < 1e-3


def test_low_resolution_equals_interpolate_down_then_up():
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(7, 2, 40, 40, generator=generator)
    factor = torch.tensor([0.25, 0.4, 0.5, 0.62, 0.75, 1.0, 0.3])
    on = torch.tensor([True] * 6 + [False])
    out = ba.low_resolution(images, ba.lowres_matrices(factor, on, 40))
    for b in range(6):
        assert torch.allclose(out[b], down_up(images[b], float(factor[b])), atol=1e-5)
    assert torch.equal(out[6], images[6])  # off: exactly unchanged
    assert not torch.allclose(out[0], images[0], atol=1e-2)


@pytest.mark.parametrize("frequency", [1 / 16, 1 / 8])
def test_low_resolution_attenuates_a_sinusoid_by_the_filters_response(frequency):
    """At factor 1/2 each low-res pixel is the antialias triangle [1, 3, 3, 1] / 8 of four
    pixels and each output pixel 3/4 + 1/4 of its two nearest low-res pixels: both have the
    response H(v) = (3 cos(pi v) + cos(3 pi v)) / 4 at v cycles per pixel, so a sinusoid below
    the low-res Nyquist frequency keeps H(v)^2 of its amplitude (H^4 of its energy), away from
    the borders (the interior, 8 px in from each side, spans whole periods of it and of its
    image at 1/2 - v)."""
    size, phase = 128, 0.3
    columns = torch.arange(size, dtype=torch.float64)
    wave = torch.cos(2 * np.pi * frequency * columns + phase)
    image = (0.5 + 0.3 * wave).float().expand(size, size)[None, None]
    matrices = ba.lowres_matrices(torch.tensor([0.5]), torch.tensor([True]), size)
    out = ba.low_resolution(image, matrices)[0, 0].double() - 0.5
    inside = slice(8, size - 8)
    amplitude = out[:, inside] @ wave[inside] / (wave[inside] @ wave[inside]) / 0.3
    response = (3 * np.cos(np.pi * frequency) + np.cos(3 * np.pi * frequency)) / 4
    assert torch.allclose(amplitude, torch.full_like(amplitude, response**2), atol=1e-4)


def test_low_resolution_removes_the_high_frequencies_and_leaves_masks_alone():
    generator = torch.Generator().manual_seed(6)
    noise = 0.5 + 0.1 * torch.randn(64, 1, 64, 64, generator=generator)
    masks = (torch.rand(64, 1, 64, 64, generator=generator) > 0.5).to(torch.uint8)
    augment = BatchAugment(only(lowres_p=1.0, lowres_scale=(0.5, 0.5)), 64)
    out, out_masks = augment(noise, masks, generator=generator)
    assert torch.equal(out_masks, masks)

    def high_share(images: torch.Tensor) -> float:
        power = torch.fft.fft2(images - images.mean(dim=(-2, -1), keepdim=True)).abs() ** 2
        frequency = torch.fft.fftfreq(64).abs()
        high = (frequency[:, None] > 0.25) | (frequency[None, :] > 0.25)  # beyond 32 px Nyquist
        return float((power * high).sum() / power.sum())

    assert abs(high_share(noise) - 0.75) < 0.02  # white noise: the share of the band's area
    assert high_share(out) < 0.05


# ------------------------------------------------------------------ behaviour


def test_image_and_mask_stay_aligned_and_masks_binary():
    y, x = _pixel_grid(48)
    square = ((x - 0.2).abs() < 0.25) & ((y + 0.15).abs() < 0.2)  # off-centre: flips show
    image, mask = square.float()[None] * 0.9, square.to(torch.uint8)[None]
    images, masks = batch_draws(AugmentConfig(), image, mask, n=64)
    assert set(masks.unique().tolist()) <= {0, 1}
    bright = images > 0.45
    dice = (
        2
        * (bright & masks.bool()).flatten(1).sum(1)
        / (bright.flatten(1).sum(1) + masks.flatten(1).sum(1))
    )
    assert dice.min() > 0.9


def test_outputs_shape_dtype_range_and_reproducibility():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 32, 32, generator=generator).half()
    masks = (torch.rand(6, 1, 32, 32, generator=generator) > 0.7).to(torch.uint8)
    augment = BatchAugment(SSL_CONFIG, 24, "ssl")
    out, out_masks = augment(images, masks, generator=torch.Generator().manual_seed(5))
    assert out.shape == (6, 3, 24, 24) and out.dtype == torch.float32
    assert out_masks.shape == (6, 1, 24, 24) and out_masks.dtype == torch.uint8
    assert 0 <= out.min() and out.max() <= 1
    again, again_masks = augment(images, masks, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, again) and torch.equal(out_masks, again_masks)
    other, _ = augment(images, masks, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(out, other)
    assert augment(images, None)[1] is None
    assert augment.config == ReferenceAugment(24, SSL_CONFIG, "ssl").config  # gamma, noise on


def test_shift_config_runs_on_a_batch_and_uses_every_op():
    image, mask = head_phantom()
    images, masks = image[None].repeat(16, 1, 1, 1), mask[None].repeat(16, 1, 1, 1)
    augment = BatchAugment(SHIFT_CONFIG, 32)
    params = augment.sample_params(16, (SIZE, SIZE), "cpu", torch.Generator().manual_seed(2))
    for name in ("rot90", "lowres_factor", "bias_coeff", "gamma", "blur_sigma", "noise_std"):
        assert getattr(params, name) is not None, name
    out, out_masks = augment.apply(images, masks, params)
    assert out.shape == (16, 1, 32, 32) and out.dtype == torch.float32
    assert out_masks.shape == (16, 1, 32, 32) and set(out_masks.unique().tolist()) <= {0, 1}
    assert 0 <= out.min() and out.max() <= 1 and torch.isfinite(out).all()
    assert len({tuple(row) for row in out.flatten(1).tolist()}) == 16  # 16 different draws


@pytest.mark.parametrize("cache_size", [32, 48])
def test_eval_mode_equals_the_reference_eval_transform(cache_size):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 2, cache_size, cache_size, generator=generator)
    masks = (torch.rand(4, 1, cache_size, cache_size, generator=generator) > 0.5).to(torch.uint8)
    out, out_masks = build_batch_augment("eval", 32)(images, masks)
    reference = reference_transform("eval", 32)
    for b in range(4):
        expected, expected_mask = reference(images[b], masks[b])
        assert torch.allclose(out[b], expected, atol=1e-6)
        assert torch.equal(out_masks[b], expected_mask)


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="kind"):
        BatchAugment(None, 32, "strong")
    with pytest.raises(ValueError, match="images"):
        BatchAugment(None, 32)(torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match="masks"):
        BatchAugment(None, 32)(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 16, 16))


# ------------------------------------------------------------------ no host synchronisation

BATCH_PATH = [
    ba.BatchAugment.sample_params,
    ba.BatchAugment.apply,
    ba.BatchAugment.forward,
    ba.sample_crop_boxes,
    ba.geometry_grid,
    ba.resize_batch,
    ba.bias_field,
    ba.adjust_gamma,
    ba.gaussian_kernels,
    ba.gaussian_blur,
    ba.lowres_matrices,
    ba.low_resolution,
    dd._DeviceBatches._index_batches,
    dd._DeviceBatches.__iter__,
    DeviceSliceLoader._batches,
    DevicePairLoader._batches,
]


@pytest.mark.parametrize("function", BATCH_PATH, ids=lambda f: f.__qualname__)
def test_batch_path_source_reads_nothing_back_to_the_host(function):
    lines = inspect.getsource(function).splitlines(keepends=True)
    tokens = tokenize.generate_tokens(iter(lines).__next__)
    skip = (tokenize.COMMENT, tokenize.STRING)  # docstrings and comments may say "sync"
    source = " ".join(token.string for token in tokens if token.type not in skip)
    for token in (".item(", ".cpu(", ".tolist(", ".numpy(", "nonzero", "masked_select", "synchron"):
        assert token not in source, f"{function.__qualname__} uses {token}"


def test_batch_path_runs_on_the_meta_device():
    """Meta tensors hold no values: any read-back to the host (``.item()``, ``bool(t)``, a
    data-dependent shape) raises there. The whole batch path runs on them."""
    images = torch.empty(4, 1, 40, 40, device="meta")
    masks = torch.empty(4, 1, 40, 40, dtype=torch.uint8, device="meta")
    for kind in ("train", "ssl", "eval"):
        out, out_masks = BatchAugment(None, 32, kind)(images, masks)
        assert out.shape == (4, 1, 32, 32) and out_masks.dtype == torch.uint8
    for n in (4, 1):  # rot90 and lowres too; a batch of one blurs by shifted sums
        augment = BatchAugment(replace(SHIFT_CONFIG, blur_p=1.0), 32)
        out, out_masks = augment(images[:n], masks[:n])
        assert out.shape == (n, 1, 32, 32) and out_masks.dtype == torch.uint8
    loader = DeviceSliceLoader(
        images.half(),
        masks,
        torch.zeros(4),
        torch.zeros(4),
        batch_size=3,
        augment=BatchAugment(None, 32),
        device="meta",
        seed=None,  # meta has no torch.Generator: its global RNG instead
    )
    assert [batch["image"].shape[0] for batch in loader] == [3, 1]
    with pytest.raises(RuntimeError):  # the probe itself: reading a value does fail there
        images.sum().item()


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_no_synchronisation_on_cuda():
    images = torch.rand(64, 1, 64, 64, device="cuda").half()
    masks = (torch.rand(64, 1, 64, 64, device="cuda") > 0.5).to(torch.uint8)
    loader = DeviceSliceLoader(
        images,
        masks,
        torch.zeros(64),
        torch.zeros(64),
        batch_size=16,
        augment=BatchAugment(None, 48),
        device="cuda",
    )
    pairs = DevicePairLoader(images, BatchAugment(None, 48, "ssl"), batch_size=16, device="cuda")
    shifted = DeviceSliceLoader(
        images,
        masks,
        torch.zeros(64),
        torch.zeros(64),
        batch_size=16,
        augment=BatchAugment(SHIFT_CONFIG, 48),  # rot90 and lowres too
        device="cuda",
    )
    list(loader), list(pairs), list(shifted)  # warm-up (lazy CUDA initialisation may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in loader:
            pass
        for _ in pairs:
            pass
        for _ in shifted:
            pass
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------------------------ loaders


@pytest.fixture
def small_cache():
    rng = np.random.default_rng(0)
    n, size = 11, 16
    table = pd.DataFrame(
        {
            "image": [f"s{i}.png" for i in range(n)],
            "frame": -1,
            "mask": [None if i % 4 == 3 else f"m{i}.png" for i in range(n)],
            "patient_id": [f"P{i // 3}" for i in range(n)],
            "tumor_type": [("astrocytoma", "meningioma", "pituitary")[i % 3] for i in range(n)],
            "grade": [("2", "3", None)[i % 3] for i in range(n)],
            "source": "test",
        }
    )
    catalog = Catalog(table, "test", ".")
    images = rng.random((n, 1, size, size)).astype(np.float16)
    masks = (rng.random((n, 1, size, size)) > 0.6).astype(np.uint8)
    has_mask = table["mask"].notna().to_numpy()
    cache = SliceCache(catalog, Preprocessing(image_size=size), images, masks, has_mask)
    return cache, LabelSpace.from_table(table)


def test_loader_batches_equal_slice_dataset_with_default_collate(small_cache):
    cache, labels = small_cache
    rows = np.array([0, 2, 3, 5, 6, 7, 8, 10])
    expected = list(DataLoader(SliceDataset(cache, rows, labels), batch_size=3))
    loader = DeviceSliceLoader.from_cache(cache, rows, labels, batch_size=3, shuffle=False)
    got = list(loader)
    assert len(got) == len(loader) == len(expected) == 3
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype, key
            assert torch.equal(ours[key], theirs[key]), key


def test_loader_shuffles_every_row_once_per_epoch_reproducibly(small_cache):
    cache, labels = small_cache
    rows = np.arange(11)
    loader = DeviceSliceLoader.from_cache(cache, rows, labels, batch_size=4, seed=7)
    epochs = [torch.cat([batch["row"] for batch in loader]) for _ in range(2)]
    for order in epochs:
        assert sorted(order.tolist()) == rows.tolist()
    assert not torch.equal(epochs[0], epochs[1]) and loader.epoch == 2
    loader.set_epoch(0)
    assert torch.equal(torch.cat([batch["row"] for batch in loader]), epochs[0])
    dropping = DeviceSliceLoader.from_cache(cache, rows, labels, batch_size=4, drop_last=True)
    assert len(dropping) == 2 and sum(len(b["row"]) for b in dropping) == 8
    # Each batch's image is the cached slice of its row.
    for batch in loader:
        expected = torch.from_numpy(cache.images[batch["row"].numpy()].astype(np.float32))
        assert torch.equal(batch["image"], expected)


def test_loader_with_augmentation_and_without_masks(small_cache):
    cache, labels = small_cache
    augment = BatchAugment(AugmentConfig(), 12)
    loader = DeviceSliceLoader.from_cache(cache, range(11), labels, batch_size=5, augment=augment)
    batch = next(iter(loader))
    assert batch["image"].shape == (5, 1, 12, 12) and batch["mask"].shape == (5, 1, 12, 12)
    assert not batch["mask"][~batch["has_mask"]].any()
    bare = DeviceSliceLoader(cache.images, None, np.zeros(11), np.zeros(11), augment=augment)
    batch = next(iter(bare))
    assert not batch["has_mask"].any() and batch["mask"].shape == (11, 1, 12, 12)
    assert not batch["mask"].any()


def test_pair_loader_gives_two_independent_views(small_cache):
    cache, _ = small_cache
    pairs = DevicePairLoader.from_cache(
        cache, range(11), BatchAugment(None, 16, "ssl"), batch_size=4
    )
    first, second = next(iter(pairs))
    assert first.shape == second.shape == (4, 1, 16, 16) and first.dtype == torch.float32
    assert not torch.equal(first, second)
    assert len(pairs) == 3
    with pytest.raises(ValueError):
        DevicePairLoader(cache.images, None)


def test_fits_on_device():
    n_bytes = dd.cache_nbytes(3000, 1, 224)
    assert n_bytes == 3000 * 224 * 224 * 3
    assert fits_on_device(n_bytes, "cpu", cpu_budget=1 << 30)
    assert not fits_on_device(n_bytes, "cpu", cpu_budget=n_bytes - 1)
    if CUDA:
        free, _ = torch.cuda.mem_get_info()
        assert fits_on_device(free // 4, "cuda") and not fits_on_device(free, "cuda")
