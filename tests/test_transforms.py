"""Tests for mritumor.data.augment.transforms: output contract, joint geometry, reproducibility."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest
import torch

from mritumor.data.augment.batch_augment import BatchAugment
from mritumor.data.augment.transforms import (
    SHIFT_CONFIG,
    SSL_CONFIG,
    AugmentConfig,
    MRIAugment,
    build_transform,
)

SIZE = 64

# Geometry only: every intensity op off.
NO_INTENSITY = AugmentConfig(gamma=(1.0, 1.0), noise_std=0.0, blur_p=0.0, bias_field_p=0.0)
# Intensity only: the geometry is exactly the identity (full-image crop, no flip, no affine).
GEOMETRY_OFF = {
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "hflip_p": 0.0,
    "vflip_p": 0.0,
    "rotate_degrees": 0.0,
    "translate": 0.0,
    "scale": (1.0, 1.0),
}
NO_GEOMETRY = AugmentConfig(**GEOMETRY_OFF)
NOTHING = replace(NO_GEOMETRY, gamma=(1.0, 1.0), noise_std=0.0, blur_p=0.0, bias_field_p=0.0)


def brain_like_slice(channels: int, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright disc ("brain") on black with a smooth texture, and an off-centre square tumour."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = (size - 1) / 2
    brain = ((ys - centre) ** 2 + (xs - centre) ** 2 <= (0.4 * size) ** 2).float()
    texture = 0.5 + 0.3 * torch.sin(xs / 5.0) * torch.cos(ys / 7.0)
    image = torch.stack([brain * texture * (0.8 + 0.1 * c) for c in range(channels)])
    mask = torch.zeros(1, size, size, dtype=torch.uint8)
    mask[0, size // 4 : size // 2, size // 2 : 3 * size // 4] = 1
    return image, mask


def blob_mask(size: int = SIZE) -> torch.Tensor:
    """A large irregular mask (an ellipse plus a rectangle) so that IoU is a meaningful measure."""
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    ellipse = ((ys - 0.45 * size) / (0.25 * size)) ** 2 + ((xs - 0.4 * size) / (0.18 * size)) ** 2
    mask = ellipse <= 1
    mask[int(0.6 * size) : int(0.8 * size), int(0.5 * size) : int(0.75 * size)] = True
    return mask[None].to(torch.uint8)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


# --- output contract -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["train", "ssl", "eval"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_mask", [True, False])
def test_output_shape_dtype_range(kind: str, channels: int, with_mask: bool) -> None:
    transform = build_transform(kind, SIZE)
    image, mask = brain_like_slice(channels)
    torch.manual_seed(0)
    for _ in range(5):
        out_image, out_mask = transform(image, mask if with_mask else None)
        assert type(out_image) is torch.Tensor
        assert out_image.dtype == torch.float32
        assert out_image.shape == (channels, SIZE, SIZE)
        assert torch.isfinite(out_image).all()
        assert out_image.min() >= 0.0 and out_image.max() <= 1.0
        if with_mask:
            assert type(out_mask) is torch.Tensor
            assert out_mask.dtype == torch.uint8
            assert out_mask.shape == (1, SIZE, SIZE)
            assert set(out_mask.unique().tolist()) <= {0, 1}
        else:
            assert out_mask is None


@pytest.mark.parametrize("kind", ["train", "ssl", "eval"])
def test_resizes_to_image_size_and_accepts_any_channel_count(kind: str) -> None:
    image, mask = brain_like_slice(channels=5, size=96)
    out_image, out_mask = build_transform(kind, SIZE)(image, mask)
    assert out_image.shape == (5, SIZE, SIZE)
    assert out_mask.shape == (1, SIZE, SIZE)
    assert set(out_mask.unique().tolist()) <= {0, 1}


def test_strong_intensity_ops_stay_clipped() -> None:
    # Saturated input plus large noise and bias field: clipping must still hold.
    config = replace(NO_GEOMETRY, noise_std=0.5, noise_p=1.0, bias_field_p=1.0, gamma_p=1.0)
    config = replace(config, bias_field_coeff=(0.5, 1.0))
    torch.manual_seed(0)
    out_image, _ = MRIAugment(SIZE, config)(torch.ones(3, SIZE, SIZE))
    assert out_image.min() >= 0.0 and out_image.max() <= 1.0
    assert torch.isfinite(out_image).all()


# --- geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_image_and_mask_get_the_same_geometry(channels: int) -> None:
    # The image *is* the mask, so any geometric mismatch shows up as a low IoU.
    mask = blob_mask()
    image = mask.float().repeat(channels, 1, 1)
    transform = build_transform("train", SIZE, replace(NO_INTENSITY, vflip_p=0.5))
    torch.manual_seed(0)
    for _ in range(20):
        out_image, out_mask = transform(image, mask)
        assert out_mask.sum() > 0  # the crop keeps >= 70 % of the area, so the blob survives
        for channel in out_image:
            assert iou(channel > 0.5, out_mask[0]) > 0.95


def test_geometry_actually_moves_pixels() -> None:
    # Guards the joint-geometry test against passing vacuously with a no-op pipeline.
    mask = blob_mask()
    transform = build_transform("train", SIZE, NO_INTENSITY)
    torch.manual_seed(0)
    changed = [not torch.equal(transform(mask.float(), mask)[1], mask) for _ in range(10)]
    assert all(changed)


def test_horizontal_flip_moves_left_blob_to_the_right() -> None:
    image = torch.zeros(1, SIZE, SIZE)
    image[:, 20:40, 2:14] = 0.8  # a blob on the left
    mask = (image > 0).to(torch.uint8)
    out_image, out_mask = MRIAugment(SIZE, replace(NOTHING, hflip_p=1.0))(image, mask)
    half = SIZE // 2
    assert out_image[..., :half].sum() == 0 and out_image[..., half:].sum() > 0
    assert out_mask[..., :half].sum() == 0 and out_mask[..., half:].sum() > 0
    assert torch.equal(out_image, image.flip(-1))
    assert torch.equal(out_mask, mask.flip(-1))


def test_everything_off_is_exact_identity() -> None:
    image, mask = brain_like_slice(3)
    out_image, out_mask = MRIAugment(SIZE, NOTHING)(image, mask)
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)


# --- reproducibility --------------------------------------------------------------------------


def run_with_seed(transform, seed: int, image: torch.Tensor, mask: torch.Tensor):
    torch.manual_seed(seed)
    return [transform(image, mask) for _ in range(3)]


def assert_same_runs(first, second) -> None:
    for (image_a, mask_a), (image_b, mask_b) in zip(first, second, strict=True):
        assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b)


@pytest.mark.parametrize("kind", ["train", "ssl"])
def test_same_seed_same_output_different_seed_different_output(kind: str) -> None:
    image, mask = brain_like_slice(3)
    transform = build_transform(kind, SIZE)
    first = run_with_seed(transform, 1, image, mask)
    assert_same_runs(first, run_with_seed(transform, 1, image, mask))
    # A fresh instance (as in a new DataLoader worker) reproduces it too.
    assert_same_runs(first, run_with_seed(build_transform(kind, SIZE), 1, image, mask))
    other = run_with_seed(transform, 2, image, mask)
    assert not torch.equal(first[0][0], other[0][0])


@pytest.mark.parametrize(
    "one_op",
    [
        {"bias_field_p": 1.0, "gamma": (1.0, 1.0)},  # bias field alone
        {"gamma_p": 1.0, "bias_field_p": 0.0},  # gamma alone
        {"lowres_p": 1.0, "bias_field_p": 0.0, "gamma": (1.0, 1.0)},  # low resolution alone
    ],
    ids=["bias_field", "gamma", "lowres"],
)
def test_intensity_ops_follow_torch_seed(one_op: dict) -> None:
    # Ops with their own random state (MONAI's numpy RNG, in the pipeline this wrapper replaced)
    # would not repeat under torch.manual_seed, nor change from call to call once re-seeded.
    config = replace(NO_GEOMETRY, noise_std=0.0, blur_p=0.0, **one_op)
    image, mask = brain_like_slice(1)
    first = run_with_seed(MRIAugment(SIZE, config), 5, image, mask)
    assert_same_runs(first, run_with_seed(MRIAugment(SIZE, config), 5, image, mask))
    assert not torch.equal(first[0][0], first[1][0])  # the field is random from call to call


@pytest.mark.parametrize("with_mask", [True, False])
def test_per_sample_transform_is_batch_augment_on_a_batch_of_one(with_mask: bool) -> None:
    # Same global seed, same draws: one implementation, and --resume / EpochSeeding (which seed
    # torch's global RNG) reproduce DataLoader workers exactly.
    image, mask = brain_like_slice(2)
    mask = mask if with_mask else None
    for config in (AugmentConfig(), SHIFT_CONFIG):
        torch.manual_seed(7)
        out_image, out_mask = MRIAugment(SIZE, config)(image, mask)
        torch.manual_seed(7)
        batch_mask = None if mask is None else mask[None]
        images, masks = BatchAugment(config, SIZE)(image[None], batch_mask)
        assert torch.equal(out_image, images[0])
        assert (out_mask is None) if mask is None else torch.equal(out_mask, masks[0])


def test_transform_survives_pickling_for_dataloader_workers() -> None:
    image, mask = brain_like_slice(1)
    transform = build_transform("ssl", SIZE)
    clone = pickle.loads(pickle.dumps(transform))
    assert_same_runs(run_with_seed(transform, 3, image, mask), run_with_seed(clone, 3, image, mask))


# --- eval, intensity, ssl ---------------------------------------------------------------------


@pytest.mark.parametrize("with_mask", [True, False])
def test_eval_is_identity(with_mask: bool) -> None:
    image, mask = brain_like_slice(3)
    out_image, out_mask = build_transform("eval", SIZE)(image, mask if with_mask else None)
    assert torch.equal(out_image, image)
    if with_mask:
        assert torch.equal(out_mask, mask)
    else:
        assert out_mask is None


def test_eval_casts_dtypes() -> None:
    image, mask = brain_like_slice(1)
    out_image, out_mask = build_transform("eval", SIZE)(image.double(), mask.bool())
    assert out_image.dtype == torch.float32 and out_mask.dtype == torch.uint8
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)


@pytest.mark.parametrize("source_size", [50, 150])
def test_eval_resize_keeps_mask_aligned_with_image(source_size: int) -> None:
    # Slices of another size are resized; the mask must land where the image content lands
    # (torchvision's default mask resize is off by up to half a pixel: IoU 0.89-0.93 here).
    mask = blob_mask(source_size)
    out_image, out_mask = build_transform("eval", SIZE)(mask.float(), mask)
    assert out_image.shape == (1, SIZE, SIZE) and out_mask.shape == (1, SIZE, SIZE)
    assert iou(out_image[0] > 0.5, out_mask[0]) > 0.98


INTENSITY_OPS = {
    "gamma": {"gamma": (0.7, 1.5), "gamma_p": 1.0},
    "noise": {"noise_std": 0.03, "noise_p": 1.0},
    "blur": {"blur_p": 1.0, "blur_sigma": (0.8, 1.0)},
    "bias_field": {"bias_field_p": 1.0, "bias_field_coeff": (0.1, 0.2)},
}


@pytest.mark.parametrize("op", list(INTENSITY_OPS))
def test_each_intensity_op_changes_image_but_not_mask(op: str) -> None:
    config = replace(NOTHING, **INTENSITY_OPS[op])
    image, mask = brain_like_slice(3)
    torch.manual_seed(0)
    out_image, out_mask = MRIAugment(SIZE, config)(image, mask)
    assert (out_image - image).abs().max() > 1e-3
    assert torch.equal(out_mask, mask)


def test_all_intensity_ops_together_leave_mask_untouched() -> None:
    config = replace(NO_GEOMETRY, gamma_p=1.0, noise_p=1.0, blur_p=1.0, bias_field_p=1.0)
    image, mask = brain_like_slice(1)
    torch.manual_seed(0)
    for _ in range(5):
        out_image, out_mask = MRIAugment(SIZE, config)(image, mask)
        assert not torch.allclose(out_image, image, atol=1e-3)
        assert torch.equal(out_mask, mask)


def test_ssl_gives_two_different_views_of_the_same_input() -> None:
    image, mask = brain_like_slice(1)
    transform = build_transform("ssl", SIZE)
    torch.manual_seed(0)
    (view_a, _), (view_b, _) = transform(image, mask), transform(image, mask)
    assert not torch.allclose(view_a, view_b, atol=1e-3)


def test_ssl_always_changes_intensity_even_without_geometry() -> None:
    # 'always some intensity change': gamma and noise fire on every ssl call.
    image, _ = brain_like_slice(1)
    transform = MRIAugment(SIZE, replace(SSL_CONFIG, **GEOMETRY_OFF), strength="ssl")
    torch.manual_seed(0)
    for _ in range(10):
        assert not torch.allclose(transform(image)[0], image, atol=1e-3)


def test_rot90_moves_a_corner_blob_to_another_corner_and_the_mask_follows() -> None:
    image = torch.zeros(1, SIZE, SIZE)
    image[:, 2:14, 3:12] = 0.8  # top left
    mask = (image > 0).to(torch.uint8)
    turned = [torch.rot90(image, k, dims=(-2, -1)) for k in (1, 2, 3)]
    transform = MRIAugment(SIZE, replace(NOTHING, rot90_p=1.0))
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        out_image, out_mask = transform(image, mask)
        k = [i for i, t in enumerate(turned) if torch.allclose(out_image, t, atol=1e-5)]
        assert len(k) == 1  # exactly one of the three other corners, never the original
        assert torch.equal(out_mask, torch.rot90(mask, k[0] + 1, dims=(-2, -1)))
        seen.add(k[0])
    assert seen == {0, 1, 2}


def test_shift_config_is_stronger_than_train_and_runs() -> None:
    train = AugmentConfig()
    assert SHIFT_CONFIG.rot90_p > 0 and SHIFT_CONFIG.vflip_p > 0 and SHIFT_CONFIG.lowres_p > 0
    assert SHIFT_CONFIG.gamma[0] < train.gamma[0] and SHIFT_CONFIG.gamma[1] > train.gamma[1]
    assert SHIFT_CONFIG.noise_std > train.noise_std and SHIFT_CONFIG.blur_p > train.blur_p
    assert SHIFT_CONFIG.crop_scale == train.crop_scale  # crop and affine as for training
    image, mask = brain_like_slice(1)
    transform = build_transform("train", SIZE, SHIFT_CONFIG)
    torch.manual_seed(0)
    outputs = [transform(image, mask) for _ in range(8)]
    for out_image, out_mask in outputs:
        assert out_image.shape == (1, SIZE, SIZE) and out_mask.dtype == torch.uint8
        assert 0 <= out_image.min() and out_image.max() <= 1
    assert not torch.equal(outputs[0][0], outputs[1][0])


def test_ssl_default_config_is_stronger_than_train() -> None:
    assert SSL_CONFIG.crop_scale[0] < AugmentConfig().crop_scale[0]
    assert build_transform("ssl", SIZE).config.crop_scale == SSL_CONFIG.crop_scale
    assert SSL_CONFIG.rotate_degrees > AugmentConfig().rotate_degrees


# --- errors -----------------------------------------------------------------------------------


def test_unknown_kind_raises() -> None:
    with pytest.raises(ValueError, match="unknown transform kind"):
        build_transform("test", SIZE)


@pytest.mark.parametrize(
    "bad",
    [
        {"hflip_p": 1.5},
        {"crop_scale": (0.9, 0.5)},
        {"noise_std": -0.1},
        {"crop_scale": (0.5, 2)},
        {"rot90_p": 1.1},
        {"lowres_p": -0.1},
        {"lowres_scale": (0.0, 0.5)},
        {"lowres_scale": (0.6, 0.4)},
        {"lowres_scale": (0.5, 1.5)},
    ],
)
def test_invalid_config_raises(bad: dict) -> None:
    with pytest.raises(ValueError):
        AugmentConfig(**bad)


def test_invalid_strength_and_inputs_raise() -> None:
    with pytest.raises(ValueError, match="strength"):
        MRIAugment(SIZE, strength="extreme")
    transform = build_transform("train", SIZE)
    with pytest.raises(ValueError, match="float"):
        transform(torch.zeros(1, SIZE, SIZE, dtype=torch.uint8))
    with pytest.raises(ValueError, match="mask"):
        transform(torch.zeros(1, SIZE, SIZE), torch.zeros(1, SIZE + 1, SIZE, dtype=torch.uint8))
