"""The reference augmentation pipeline, assembled from torchvision v2 and MONAI ops.

This is the per-sample pipeline that ``mritumor.data.augment.transforms`` used before it became a thin
wrapper of :class:`mritumor.data.augment.batch_augment.BatchAugment`. It lives here, in the tests, as an
independent implementation: ``tests/test_batch_augment.py`` checks that ``BatchAugment`` draws
from the same distribution and, for given parameters, computes the same pixels.

* geometry (torchvision.transforms.v2, applied once to a ``tv_tensors.Image`` and a
  ``tv_tensors.Mask`` together, so both get the *same* random parameters; masks are resampled
  nearest-neighbour, so they stay binary): RandomResizedCrop -> RandomHorizontalFlip ->
  RandomVerticalFlip -> random 90-degree rotation -> RandomAffine (small rotation /
  translation / scale). The crop is subclassed only to resample the mask with pixel-centre
  nearest (see ``_AlignedRandomResizedCrop``);
* intensity (image only): MONAI RandBiasField (MRI coil inhomogeneity) -> MONAI
  RandAdjustContrast (gamma; it works on the min-max range, so the black background stays black)
  -> v2 GaussianBlur -> down-then-up sampling (``F.interpolate``: bilinear + antialias down,
  bilinear up) -> v2 GaussianNoise.

Known differences of ``BatchAugment`` from this pipeline (all in the geometry, none in the
distribution of the random parameters):

* Here the image is resampled twice (bilinear crop-resize, then a *nearest* affine:
  v2.RandomAffine's default interpolation); ``BatchAugment`` applies one composed matrix once,
  bilinearly. Its images are a little smoother and its masks are resampled once with nearest
  instead of twice, so a mask edge can differ by a pixel.
* Samples at the very border of the crop window are interpolated with the real neighbouring
  pixels (or zeros at the image border) where torchvision's resize clamps to the crop's edge.
* When the input is *larger* than the output size, torchvision's resize is antialiased;
  ``grid_sample`` is not (cached slices already have the output size: crops are upsampled).
* Random streams differ: the same seed gives different (equally distributed) draws.
* Bias field and gamma are computed in float32 by ``BatchAugment`` (MONAI: float64).

Reproducibility: torchvision v2 draws from torch's global RNG; MONAI draws from its own numpy
``RandomState``, which ``ReferenceAugment`` re-seeds on every call from ``torch.randint``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as torch_functional
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# input checks are not what the reference is an independent check of: shared with src
from mritumor.data.augment.transforms import (
    SSL_CONFIG,
    AugmentConfig,
    _check_image_size,
    _validated,
)

STRENGTHS = ("train", "ssl")
KINDS = ("train", "ssl", "eval")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class ReferenceAugment:
    """Callable (image, mask|None) -> (image, mask|None); same geometry for both.

    ``strength="train"`` uses the config as given. ``strength="ssl"`` additionally applies gamma
    and noise on every call (probability 1), so two SimCLR views always differ in intensity too;
    pair it with :data:`SSL_CONFIG` (what ``build_transform("ssl", ...)`` does) for larger crops.
    """

    def __init__(
        self, image_size: int, config: AugmentConfig | None = None, strength: str = "train"
    ) -> None:
        config = AugmentConfig() if config is None else config
        _check_image_size(image_size)
        _check(strength in STRENGTHS, f"strength must be one of {STRENGTHS}, got {strength!r}")
        if strength == "ssl":
            config = replace(config, gamma_p=1.0, noise_p=1.0)
        self.image_size = image_size
        self.config = config
        self.strength = strength
        self._geometry = _geometry_pipeline(image_size, config)
        self._monai_ops = _monai_intensity_ops(config)
        self._torch_ops = _torch_intensity_ops(config)
        # One numpy RNG for all MONAI ops, re-seeded from torch on each call (see module doc).
        self._numpy_rng = np.random.RandomState(0)
        for op in self._monai_ops:
            op.set_random_state(state=self._numpy_rng)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        image, mask = _validated(image, mask)
        image, mask = self._apply_geometry(image, mask)
        image = self._apply_intensity(image)
        return _clipped(image), mask

    def _apply_geometry(
        self, image: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if mask is None:
            return _plain(self._geometry(tv_tensors.Image(image))), None
        image, mask = self._geometry(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return _plain(image), _plain(mask)

    def _apply_intensity(self, image: torch.Tensor) -> torch.Tensor:
        if self._monai_ops:
            self._numpy_rng.seed(int(torch.randint(0, 2**32, (1,))))
        for op in self._monai_ops:
            image = _plain(op(image))
        return self._torch_ops(image)

    def __repr__(self) -> str:
        return f"ReferenceAugment(image_size={self.image_size}, strength={self.strength!r})"


class ReferenceEval:
    """Identity for evaluation: image as float32, mask as uint8. Only a slice that is not already
    ``image_size`` square is resized (bilinear image, pixel-centre nearest mask: see
    ``_AlignedRandomResizedCrop`` for why not v2.Resize's mask handling)."""

    def __init__(self, image_size: int) -> None:
        _check_image_size(image_size)
        self.image_size = image_size

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        image, mask = _validated(image, mask)
        size = [self.image_size, self.image_size]
        if list(image.shape[-2:]) == size:
            return image, mask
        image = F.resize(image, size, antialias=True)
        if mask is not None:
            mask = F.resize(mask, size, interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return image, mask

    def __repr__(self) -> str:
        return f"ReferenceEval(image_size={self.image_size})"


def reference_transform(
    kind: str, image_size: int, config: AugmentConfig | None = None
) -> ReferenceAugment | ReferenceEval:
    """kind: 'train' (moderate, for supervised training), 'ssl' (stronger, for SimCLR views:
    larger crop range e.g. (0.3, 1.0), always some intensity change), 'eval' (identity: returns
    inputs unchanged, as float32 image and uint8 mask). Returns a callable
    (image, mask|None) -> (image, mask|None). Raises ValueError for an unknown kind.

    ``config`` defaults to ``AugmentConfig()`` for 'train' and ``SSL_CONFIG`` for 'ssl'; 'eval'
    ignores it."""
    if kind == "train":
        return ReferenceAugment(
            image_size, config if config is not None else AugmentConfig(), strength="train"
        )
    if kind == "ssl":
        return ReferenceAugment(
            image_size, config if config is not None else SSL_CONFIG, strength="ssl"
        )
    if kind == "eval":
        return ReferenceEval(image_size)
    raise ValueError(f"unknown transform kind {kind!r}; expected one of {KINDS}")


class _AlignedRandomResizedCrop(v2.RandomResizedCrop):
    """v2.RandomResizedCrop whose mask resampling lines up with the image.

    The one hand-written piece, because neither library offers it: torchvision resizes masks with
    legacy ``NEAREST`` (source pixel ``floor(dst * scale)``), whereas the image's bilinear resize
    samples pixel centres; the mask then drifts by up to half a pixel from the image (IoU of a
    mask-shaped image with its mask drops to ~0.93 at 64 px). ``NEAREST_EXACT`` uses pixel centres
    like the image. Crop parameters are still drawn once by torchvision for image and mask alike.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Mask):
            return super().transform(inpt, params)
        resized = F.resized_crop(
            _plain(inpt),
            **params,
            size=self.size,
            interpolation=v2.InterpolationMode.NEAREST_EXACT,
        )
        return tv_tensors.wrap(resized, like=inpt)


class RandomRot90(v2.Transform):
    """Rotation by 90, 180 or 270 degrees (uniform), the same for image and mask: torch.rot90
    of the (square) output, counter-clockwise as displayed."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(1, 4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.wrap(torch.rot90(_plain(inpt), params["k"], dims=(-2, -1)), like=inpt)


class DownUp(v2.Transform):
    """Simulated low resolution: bilinear + antialias down to ``round(f * side)`` pixels, then
    bilinear back up, with ``f`` uniform in ``scale``."""

    def __init__(self, scale: tuple[float, float]) -> None:
        super().__init__()
        self.scale = scale

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        low, high = self.scale
        return {"factor": low + (high - low) * float(torch.rand(()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return down_up(_plain(inpt), params["factor"])


def down_up(image: torch.Tensor, factor: float) -> torch.Tensor:
    """(C, H, W) image down to ``max(1, round(factor * H))`` x (same for W) and back."""
    height, width = image.shape[-2:]
    low = (max(1, round(factor * height)), max(1, round(factor * width)))
    small = torch_functional.interpolate(
        image[None], size=low, mode="bilinear", align_corners=False, antialias=True
    )
    return torch_functional.interpolate(
        small, size=(height, width), mode="bilinear", align_corners=False
    )[0]


def _geometry_pipeline(image_size: int, config: AugmentConfig) -> v2.Compose:
    ops: list[v2.Transform] = [
        _AlignedRandomResizedCrop(
            (image_size, image_size),
            scale=config.crop_scale,
            ratio=config.crop_ratio,
            antialias=True,
        )
    ]
    if config.hflip_p > 0:
        ops.append(v2.RandomHorizontalFlip(config.hflip_p))
    if config.vflip_p > 0:
        ops.append(v2.RandomVerticalFlip(config.vflip_p))
    if config.rot90_p > 0:
        ops.append(v2.RandomApply([RandomRot90()], p=config.rot90_p))
    if _has_affine(config):
        # Zero fill: MRI background is black, and for the mask it means "no tumour".
        ops.append(
            v2.RandomAffine(
                degrees=config.rotate_degrees,
                translate=(config.translate, config.translate) if config.translate else None,
                scale=config.scale,
                fill=0,
            )
        )
    return v2.Compose(ops)


def _has_affine(config: AugmentConfig) -> bool:
    # Skipping an identity affine saves a resampling (the slowest op) and keeps pixels exact.
    return config.rotate_degrees > 0 or config.translate > 0 or config.scale != (1.0, 1.0)


def _monai_intensity_ops(config: AugmentConfig) -> list:
    # Imported here, not at module level: importing MONAI costs seconds (its package import pulls
    # in monai.apps/networks and torchvision.models), and the eval transform never needs it.
    from monai.transforms import RandAdjustContrast, RandBiasField

    ops = []
    if config.bias_field_p > 0 and config.bias_field_coeff != (0.0, 0.0):
        ops.append(
            RandBiasField(
                degree=config.bias_field_degree,
                coeff_range=config.bias_field_coeff,
                prob=config.bias_field_p,
            )
        )
    if config.gamma_p > 0 and config.gamma != (1.0, 1.0):
        ops.append(RandAdjustContrast(prob=config.gamma_p, gamma=config.gamma))
    return ops


def _torch_intensity_ops(config: AugmentConfig) -> v2.Transform:
    ops: list[v2.Transform] = []
    if config.blur_p > 0:
        # Kernel covers +-2 sigma of the largest sigma (odd, as required): torchvision blurs with
        # one 2-D conv, whose cost grows with the kernel area (k=11 costs ~4x k=5 on CPU), and
        # the truncated (renormalised) tails do not matter for augmentation.
        kernel_size = 2 * math.ceil(2 * config.blur_sigma[1]) + 1
        blur = v2.GaussianBlur(kernel_size, sigma=config.blur_sigma)
        ops.append(v2.RandomApply([blur], p=config.blur_p))
    if config.lowres_p > 0:
        ops.append(v2.RandomApply([DownUp(config.lowres_scale)], p=config.lowres_p))
    if config.noise_p > 0 and config.noise_std > 0:
        # No clipping here: the final clip to [0, 1] covers every op at once.
        noise = v2.GaussianNoise(sigma=config.noise_std, clip=False)
        ops.append(v2.RandomApply([noise], p=config.noise_p))
    return v2.Compose(ops) if ops else v2.Identity()  # Compose refuses an empty list


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """Drop tv_tensors / MONAI MetaTensor subclasses: callers get ordinary tensors."""
    return tensor.as_subclass(torch.Tensor)


def _clipped(image: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)
