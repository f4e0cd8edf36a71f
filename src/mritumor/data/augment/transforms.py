"""MRI-appropriate data augmentation for 2-D slices, image and mask transformed together.

Inputs are a float image tensor ``(C, H, W)`` with values in [0, 1] (C = 1, or one channel per
MRI sequence) and an optional uint8 mask ``(1, H, W)`` with values {0, 1}. Outputs are a float32
image ``(C, S, S)`` clipped to [0, 1] and a uint8 mask ``(1, S, S)`` (or ``None``).

There is one implementation of the ops: :class:`mritumor.data.augment.batch_augment.BatchAugment`.
``MRIAugment`` (what DataLoader workers call per slice) runs it on a batch of one, and
``EvalTransform`` runs its eval resize. Per slice this is also faster than the torchvision v2 +
MONAI pipeline it replaces (one composed resampling instead of two, no MetaTensor wrapping);
that pipeline is kept in ``tests/augment_reference.py`` as the independent reference which
``tests/test_batch_augment.py`` compares ``BatchAugment`` with.

* geometry (the same map for image and mask; masks resampled nearest, so they stay binary):
  random resized crop -> horizontal / vertical flips -> rotation by a multiple of 90 degrees ->
  small affine (rotation / translation / scale), composed into one resampling;
* intensity (image only): bias field (MRI coil inhomogeneity) -> gamma on the min-max range (so
  the black background stays black) -> Gaussian blur -> simulated low resolution -> Gaussian
  noise. There is deliberately no colour jitter: hue and saturation mean nothing for MRI.

Reproducibility: every random number is drawn from torch's global RNG, so ``torch.manual_seed``
(or DataLoader worker seeding, which seeds torch in each worker; or EpochSeeding) makes runs
reproducible. All callables returned here are picklable, so they work with DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "SHIFT_CONFIG",
    "SSL_CONFIG",
    "AugmentConfig",
    "EvalTransform",
    "MRIAugment",
    "build_transform",
]

STRENGTHS = ("train", "ssl")
KINDS = ("train", "ssl", "eval")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges and probabilities of each augmentation. A probability of 0 (or an identity range)
    removes the op from the pipeline altogether."""

    crop_scale: tuple[float, float] = (0.7, 1.0)  # random resized crop: area range
    # Aspect ratios of the crop. Narrower than ImageNet's (3/4, 4/3): brains are not that elastic.
    crop_ratio: tuple[float, float] = (0.8, 1.25)
    hflip_p: float = 0.5  # left/right: brains are roughly symmetric
    vflip_p: float = 0.0  # upside-down brains do not occur in axial slices
    rotate_degrees: float = 10.0  # small affine: rotation in [-d, d]
    translate: float = 0.05  # fraction of the side
    scale: tuple[float, float] = (0.9, 1.1)
    gamma: tuple[float, float] = (0.7, 1.5)  # gamma / contrast
    gamma_p: float = 0.5
    noise_std: float = 0.03
    noise_p: float = 0.5
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    bias_field_p: float = 0.3
    # Range of the field's polynomial coefficients. Symmetric, unlike MONAI's (0, 0.1), so the
    # field darkens as often as it brightens; (-0.1, 0.1) gives ~0.85-1.2x inside the brain.
    bias_field_coeff: tuple[float, float] = (-0.1, 0.1)
    bias_field_degree: int = 3
    # Rotation by a random multiple of 90 degrees: with probability rot90_p by 90, 180 or 270
    # (uniform), after the flips. Off for axial slices; sagittal and coronal slices (or another
    # scanner's orientation convention) show the head sideways or upside down.
    rot90_p: float = 0.0
    # Simulated low resolution (thick slices, small matrix): with probability lowres_p the image
    # is downsampled by a factor uniform in lowres_scale (bilinear + antialias) and upsampled
    # back (bilinear), as a low-resolution scan looks after the cache's resize.
    lowres_p: float = 0.0
    lowres_scale: tuple[float, float] = (0.25, 0.75)

    def __post_init__(self) -> None:
        probabilities = ("hflip_p", "vflip_p", "rot90_p", "gamma_p", "noise_p", "blur_p")
        for name in (*probabilities, "bias_field_p", "lowres_p"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"{name} must lie in [0, 1]")
        ranges = ("crop_scale", "crop_ratio", "scale", "gamma", "blur_sigma", "lowres_scale")
        for name in ranges:
            low, high = getattr(self, name)
            _check(0.0 < low <= high, f"{name} must be an increasing range of positive numbers")
        _check(self.crop_scale[1] <= 1.0, "crop_scale cannot exceed 1 (the whole image)")
        _check(self.lowres_scale[1] <= 1.0, "lowres_scale cannot exceed 1 (that would upsample)")
        _check(self.bias_field_coeff[0] <= self.bias_field_coeff[1], "bias_field_coeff: low > high")
        _check(0.0 <= self.translate <= 1.0, "translate must lie in [0, 1]")
        _check(self.rotate_degrees >= 0.0, "rotate_degrees must be >= 0")
        _check(self.noise_std >= 0.0, "noise_std must be >= 0")
        _check(self.bias_field_degree >= 1, "bias_field_degree must be >= 1")


# Stronger views for SimCLR: crops down to 30 % of the area, more rotation and contrast change.
# Stronger than supervised training, milder than the SimCLR paper's (crops down to 8 % of the
# image need hundreds of epochs): on figshare slices at 64 px this setting lowered the NT-Xent
# loss 4.70 → 4.55 in two epochs where crops down to 30 % (with stronger intensity changes)
# barely moved it (4.87 → 4.79) — pretraining here must pay off within a CPU-sized budget.
SSL_CONFIG = AugmentConfig(
    crop_scale=(0.5, 1.0),
    rotate_degrees=15.0,
    translate=0.08,
    scale=(0.85, 1.15),
    gamma=(0.6, 1.7),
    noise_std=0.04,
    blur_p=0.3,
    blur_sigma=(0.1, 1.5),
    bias_field_p=0.4,
    bias_field_coeff=(-0.15, 0.15),
)


# For robustness to other scanners and planes (issue 17, ``--augment shift``): the crop and the
# affine of AugmentConfig, plus every orientation of the dihedral group (flips and 90-degree
# rotations: sagittal and coronal slices, other orientation conventions), stronger contrast
# and coil-field changes, stronger blur, low resolution and more noise.
SHIFT_CONFIG = AugmentConfig(
    vflip_p=0.5,
    rot90_p=0.5,
    gamma=(0.5, 2.0),
    gamma_p=0.8,
    bias_field_p=0.5,
    bias_field_coeff=(-0.3, 0.3),
    blur_p=0.4,
    blur_sigma=(0.1, 2.0),
    lowres_p=0.4,
    noise_p=0.5,
    noise_std=0.05,
)


class MRIAugment:
    """Callable (image, mask|None) -> (image, mask|None); same geometry for both.

    ``strength="train"`` uses the config as given. ``strength="ssl"`` additionally applies gamma
    and noise on every call (probability 1), so two SimCLR views always differ in intensity too;
    pair it with :data:`SSL_CONFIG` (what ``build_transform("ssl", ...)`` does) for larger crops.
    """

    def __init__(
        self, image_size: int, config: AugmentConfig = AugmentConfig(), strength: str = "train"
    ) -> None:
        # Imported here: batch_augment imports AugmentConfig from this module.
        from mritumor.data.augment.batch_augment import BatchAugment

        _check_image_size(image_size)
        _check(strength in STRENGTHS, f"strength must be one of {STRENGTHS}, got {strength!r}")
        self._batch = BatchAugment(config, image_size, kind=strength)
        self.image_size = image_size
        self.config = self._batch.config  # for ssl: gamma_p and noise_p raised to 1
        self.strength = strength

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        image, mask = _validated(image, mask)
        # generator=None: the global torch RNG (see the module doc).
        images, masks = self._batch(image[None], None if mask is None else mask[None])
        return images[0], None if masks is None else masks[0]

    def __repr__(self) -> str:
        return f"MRIAugment(image_size={self.image_size}, strength={self.strength!r})"


class EvalTransform:
    """Identity for evaluation: image as float32, mask as uint8. Only a slice that is not already
    ``image_size`` square is resized (bilinear + antialias image, pixel-centre nearest mask:
    ``nearest-exact`` lines up with the image, legacy ``nearest`` drifts by half a pixel)."""

    def __init__(self, image_size: int) -> None:
        _check_image_size(image_size)
        self.image_size = image_size

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        from mritumor.data.augment.batch_augment import resize_batch  # see MRIAugment.__init__

        image, mask = _validated(image, mask)
        images, masks = resize_batch(
            image[None], None if mask is None else mask[None], self.image_size
        )
        return images[0], None if masks is None else masks[0]

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size})"


def build_transform(
    kind: str, image_size: int, config: AugmentConfig | None = None
) -> MRIAugment | EvalTransform:
    """kind: 'train' (moderate, for supervised training), 'ssl' (stronger, for SimCLR views:
    larger crop range e.g. (0.3, 1.0), always some intensity change), 'eval' (identity: returns
    inputs unchanged, as float32 image and uint8 mask). Returns a callable
    (image, mask|None) -> (image, mask|None). Raises ValueError for an unknown kind.

    ``config`` defaults to ``AugmentConfig()`` for 'train' and ``SSL_CONFIG`` for 'ssl'; 'eval'
    ignores it."""
    if kind == "train":
        return MRIAugment(
            image_size, config if config is not None else AugmentConfig(), strength="train"
        )
    if kind == "ssl":
        return MRIAugment(image_size, config if config is not None else SSL_CONFIG, strength="ssl")
    if kind == "eval":
        return EvalTransform(image_size)
    raise ValueError(f"unknown transform kind {kind!r}; expected one of {KINDS}")


def _check_image_size(image_size: int) -> None:
    _check(
        isinstance(image_size, int) and image_size > 0,
        f"image_size must be a positive int, got {image_size!r}",
    )


def _validated(
    image: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check shapes and bring dtypes to float32 image / uint8 mask."""
    _check(
        isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] >= 1,
        f"image must be a (C, H, W) tensor, got {getattr(image, 'shape', type(image))}",
    )
    _check(image.is_floating_point(), f"image must be a float tensor in [0, 1], got {image.dtype}")
    image = image.to(torch.float32)
    if mask is None:
        return image, None
    _check(
        isinstance(mask, torch.Tensor) and mask.shape == (1, *image.shape[-2:]),
        f"mask must be a (1, H, W) tensor matching image {tuple(image.shape)}, "
        f"got {getattr(mask, 'shape', type(mask))}",
    )
    return image, mask.to(torch.uint8)
