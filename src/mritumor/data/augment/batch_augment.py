"""Batched, device-agnostic augmentation: the one implementation of the augmentation ops.

:class:`BatchAugment` takes a whole batch ``images (B, C, H, W)`` float (and optionally
``masks (B, 1, H, W)``) on any device and returns ``(B, C, S, S)`` float32 images clipped to
[0, 1] and ``(B, 1, S, S)`` uint8 masks. :mod:`mritumor.data.augment.transforms` runs it on a batch of
one per slice (DataLoader workers); the default device path runs it on whole batches. Every
random parameter is drawn for the whole batch at once as a tensor on the device (from a
``torch.Generator`` of that device, or its global RNG), and every op is applied to all samples
with ``torch.where`` selecting, per sample, whether it took effect: there is no Python loop over
samples, no Python branch on a random value and no device-to-host copy (``.item()``, ``.cpu()``,
``.tolist()``) anywhere in the batch path, so on CUDA a batch is queued without synchronising.

Which library op each batched op reproduces (``tests/augment_reference.py`` assembles them into
the reference pipeline, and lists where the two differ: the geometry is resampled once here),
in order:

* ``v2.RandomResizedCrop`` -> flips -> ``torch.rot90`` -> ``v2.RandomAffine``: composed into one
  affine map per sample, evaluated on the output pixel grid (what ``affine_grid`` computes) and
  applied by one ``grid_sample`` - bilinear for images, nearest for masks, the same map for
  both. The crop parameters follow torchvision's procedure exactly (area and log-aspect draws,
  up to 10 tries of rejection sampling, the central fallback, uniform integer offsets),
  vectorised; flips are Bernoulli(p) sign changes; a 90-degree rotation is a signed permutation
  of the coordinates (so it costs nothing and is exact); the affine has the same angle /
  integer-pixel translation / scale laws and torchvision's inverse matrix. Output pixels the
  affine fills with 0 (sourced from outside the crop) are 0.
* MONAI ``RandBiasField``: ``x * exp(sum_{i>=j} c_ij P_i(y) P_j(x))``, Legendre polynomials,
  coefficients uniform in ``bias_field_coeff`` laid out as ``np.tril_indices``.
* MONAI ``RandAdjustContrast``: gamma on each sample's min-max range, same epsilon.
* ``v2.GaussianBlur`` in ``v2.RandomApply``: torchvision's kernel formula and size, one sigma per
  sample, reflect padding, as two grouped 1-D convolutions.
* ``F.interpolate`` down (bilinear, antialias) then up (bilinear): low resolution, one factor
  per sample, as one (S, S) resampling matrix per sample and axis (see ``lowres_matrices``).
* ``v2.GaussianNoise(clip=False)`` in ``v2.RandomApply``: ``x + std * randn``.
* the final clip: ``nan_to_num`` then clamp to [0, 1].
* ``kind='eval'``: ``interpolate`` bilinear + antialias for images and nearest-exact for masks,
  only when the size differs.

Each op with a probability is computed for every sample and kept where a per-sample Bernoulli
draw says so (``torch.where``; a blur that is off uses a delta kernel, a bias field that is off
zero coefficients); ops the config removes are skipped altogether.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

# The kernels live in augment_ops (this file's length); they stay importable from here.
from mritumor.data.augment.augment_ops import (
    _clipped,
    _per_sample,
    _validated,
    adjust_gamma,
    bias_field,
    gaussian_blur,
    gaussian_kernels,
    low_resolution,
    lowres_matrices,
    resize_batch,
    sample_crop_boxes,
)
from mritumor.data.augment.transforms import SSL_CONFIG, AugmentConfig

__all__ = [
    "AugmentParams",
    "BatchAugment",
    "adjust_gamma",
    "bias_field",
    "build_batch_augment",
    "gaussian_blur",
    "gaussian_kernels",
    "geometry_grid",
    "low_resolution",
    "lowres_matrices",
    "resize_batch",
    "sample_crop_boxes",
]

KINDS = ("train", "ssl", "eval")
_OUTSIDE = -4.0  # a grid coordinate whose bilinear / nearest neighbours all lie outside


@dataclass
class AugmentParams:
    """Per-sample random parameters of one batch, all tensors of leading size B on the device.

    ``crop``: (B, 4) float ``top, left, height, width`` in input pixels (integers, as
    torchvision draws them). ``hflip``/``vflip``: (B,) bool. ``angle``: (B,) degrees.
    ``translate``: (B, 2) integer pixels ``(tx, ty)`` of the output. ``scale``: (B,).
    ``bias_coeff``: (B, K) Legendre coefficients (zeros where the op is off). ``gamma``: (B,)
    with ``gamma_on`` (B,) bool. ``blur_sigma``: (B,) with ``blur_on``. ``rot90``: (B,) int
    quarter turns counter-clockwise (0 where the op is off). ``lowres_factor``: (B,) with
    ``lowres_on``. ``noise_std``: (B,) (zero where the op is off). Ops removed by the config
    hold ``None``."""

    crop: torch.Tensor
    hflip: torch.Tensor
    vflip: torch.Tensor
    angle: torch.Tensor
    translate: torch.Tensor
    scale: torch.Tensor
    bias_coeff: torch.Tensor | None = None
    gamma: torch.Tensor | None = None
    gamma_on: torch.Tensor | None = None
    blur_sigma: torch.Tensor | None = None
    blur_on: torch.Tensor | None = None
    rot90: torch.Tensor | None = None
    lowres_factor: torch.Tensor | None = None
    lowres_on: torch.Tensor | None = None
    noise_std: torch.Tensor | None = None


class BatchAugment(nn.Module):
    """Batched augmentation: ``forward(images, masks=None, generator=None) -> (images, masks)``.

    ``kind='train'`` uses ``config`` (default ``AugmentConfig()``) as given; ``'ssl'`` defaults
    to :data:`SSL_CONFIG` and, like ``MRIAugment(strength='ssl')``, applies gamma and noise to
    every sample; ``'eval'`` only resizes to ``size`` (identical to ``EvalTransform``).

    ``images``: (B, C, H, W) float (float16 is accepted and computed in float32) in [0, 1];
    ``masks``: (B, 1, H, W) of any numeric/bool dtype with values {0, 1}, or ``None``.
    Returns float32 (B, C, S, S) in [0, 1] and uint8 (B, 1, S, S) (or ``None``), on the input's
    device. ``generator`` must live on that device; ``None`` uses the device's global RNG.
    The module has no parameters or buffers; ``.to(device)`` is not needed.
    """

    def __init__(
        self, config: AugmentConfig | None = None, size: int = 224, kind: str = "train"
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not (isinstance(size, int) and size > 0):
            raise ValueError(f"size must be a positive int, got {size!r}")
        if config is None:
            config = SSL_CONFIG if kind == "ssl" else AugmentConfig()
        if kind == "ssl":
            config = replace(config, gamma_p=1.0, noise_p=1.0)
        self.config, self.size, self.kind = config, size, kind
        c = config
        # Ops the config removes altogether (as the reference pipeline leaves them out).
        self._has_affine = c.rotate_degrees > 0 or c.translate > 0 or c.scale != (1.0, 1.0)
        self._identity_geometry = (
            c.crop_scale == (1.0, 1.0)
            and c.crop_ratio == (1.0, 1.0)
            and c.hflip_p == 0
            and c.vflip_p == 0
            and c.rot90_p == 0
            and not self._has_affine
        )
        self._has_bias = c.bias_field_p > 0 and c.bias_field_coeff != (0.0, 0.0)
        self._has_gamma = c.gamma_p > 0 and c.gamma != (1.0, 1.0)
        self._has_blur = c.blur_p > 0
        self._has_lowres = c.lowres_p > 0
        self._has_noise = c.noise_p > 0 and c.noise_std > 0
        self.blur_kernel_size = (
            2 * math.ceil(2 * c.blur_sigma[1]) + 1
        )  # as v2.GaussianBlur's in the reference
        self.bias_terms = (c.bias_field_degree + 1) * (c.bias_field_degree + 2) // 2

    def extra_repr(self) -> str:
        return f"size={self.size}, kind={self.kind!r}"

    # ---------------------------------------------------------------- parameters

    def sample_params(
        self,
        batch: int,
        in_size: tuple[int, int],
        device: torch.device | str,
        generator: torch.Generator | None = None,
    ) -> AugmentParams:
        """Draw every random parameter of a batch (on ``device``, no host synchronisation)."""
        c, device = self.config, torch.device(device)

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            u = torch.rand(batch, *shape, generator=generator, device=device)
            return low + (high - low) * u

        def bernoulli(p: float) -> torch.Tensor:
            return torch.rand(batch, generator=generator, device=device) < p

        crop = sample_crop_boxes(
            batch, in_size, c.crop_scale, c.crop_ratio, device=device, generator=generator
        )
        hflip, vflip = bernoulli(c.hflip_p), bernoulli(c.vflip_p)
        zeros = torch.zeros(batch, device=device)
        angle, translate, scale = zeros, torch.zeros(batch, 2, device=device), zeros + 1.0
        if self._has_affine:
            angle = uniform(-c.rotate_degrees, c.rotate_degrees)
            if c.translate > 0:  # v2.RandomAffine: round(U(-t*side, t*side)) pixels
                limit = c.translate * self.size
                translate = torch.round(uniform(-limit, limit, 2))
            scale = uniform(*c.scale)
        params = AugmentParams(crop, hflip, vflip, angle, translate, scale)
        if c.rot90_p > 0:  # 90, 180 or 270 degrees, uniform
            on = bernoulli(c.rot90_p)
            turns = torch.randint(1, 4, (batch,), generator=generator, device=device)
            params.rot90 = torch.where(on, turns, 0)
        if self._has_bias:
            on = bernoulli(c.bias_field_p)
            coeff = uniform(*c.bias_field_coeff, self.bias_terms)
            params.bias_coeff = torch.where(on[:, None], coeff, torch.zeros_like(coeff))
        if self._has_gamma:
            params.gamma_on, params.gamma = bernoulli(c.gamma_p), uniform(*c.gamma)
        if self._has_blur:
            params.blur_on, params.blur_sigma = bernoulli(c.blur_p), uniform(*c.blur_sigma)
        if self._has_lowres:
            params.lowres_on, params.lowres_factor = bernoulli(c.lowres_p), uniform(*c.lowres_scale)
        if self._has_noise:
            on = bernoulli(c.noise_p)
            params.noise_std = torch.where(on, c.noise_std, 0.0)
        return params

    # ---------------------------------------------------------------- application

    def apply(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None,
        params: AugmentParams,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply given parameters (geometry, then intensity, then the clip); ``generator``
        draws the pixel noise."""
        images, masks = _validated(images, masks)
        if self._identity_geometry and tuple(images.shape[-2:]) == (self.size, self.size):
            # Whole-image crop, no flip or turn, no affine: the pixels are returned unchanged.
            out, masks = images, None if masks is None else masks.to(torch.uint8)
        else:
            grid = geometry_grid(params, images.shape[-2:], self.size)
            out = F.grid_sample(images, grid, mode="bilinear", align_corners=False)
            if masks is not None:
                masks = F.grid_sample(
                    masks.to(torch.float32), grid, mode="nearest", align_corners=False
                ).to(torch.uint8)
        if params.bias_coeff is not None:  # monai RandBiasField
            field = bias_field(params.bias_coeff, self.config.bias_field_degree, self.size)
            out = out * torch.exp(field)
        if params.gamma is not None:  # monai RandAdjustContrast
            out = torch.where(_per_sample(params.gamma_on), adjust_gamma(out, params.gamma), out)
        if params.blur_sigma is not None:  # v2.RandomApply(v2.GaussianBlur)
            kernels = gaussian_kernels(params.blur_sigma, self.blur_kernel_size)
            identity = torch.zeros_like(kernels)
            identity[:, self.blur_kernel_size // 2] = 1.0
            kernels = torch.where(params.blur_on[:, None], kernels, identity)
            out = gaussian_blur(out, kernels)
        if params.lowres_factor is not None:  # F.interpolate down (antialias) and up
            matrices = lowres_matrices(params.lowres_factor, params.lowres_on, self.size)
            out = low_resolution(out, matrices)
        if params.noise_std is not None:  # v2.RandomApply(v2.GaussianNoise(clip=False))
            noise = torch.randn(out.shape, generator=generator, device=out.device)
            out = out + noise * _per_sample(params.noise_std)
        return _clipped(out), masks

    def forward(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.kind == "eval":
            return resize_batch(images, masks, self.size)
        params = self.sample_params(images.shape[0], images.shape[-2:], images.device, generator)
        return self.apply(images, masks, params, generator)


def build_batch_augment(kind: str, size: int, config: AugmentConfig | None = None) -> BatchAugment:
    """The batched counterpart of :func:`mritumor.data.augment.transforms.build_transform`."""
    return BatchAugment(config, size, kind)


# -------------------------------------------------------------------- geometry


def geometry_grid(params: AugmentParams, in_size: tuple[int, int], size: int) -> torch.Tensor:
    """The ``grid_sample`` grid (B, S, S, 2) of crop -> flips -> rot90 -> affine, one map per
    sample. Output pixels that torchvision's affine fills with 0 (their source lies outside the crop)
    are sent far outside the image, so ``grid_sample``'s zero padding fills them.

    Coordinates are ``align_corners=False`` normalised ([-1, 1] spans pixel edges). The affine
    is torchvision's inverse matrix ``M = R(-angle) / scale`` about the centre, pulling output
    ``u`` from ``v = M (u - 2 t / S)`` of the flipped crop, which must lie in [-1, 1]^2; the
    quarter turns map ``v`` to ``Q v``, ``Q = [[cos, -sin], [sin, cos]]`` of ``k * 90`` degrees
    (torch.rot90's source pixel: a signed permutation, folded into ``M``, which keeps the
    square fill test unchanged); the flips negate ``v_x`` / ``v_y``; the crop maps ``v`` to ``(w / W) v_x + (2 left + w) / W - 1``
    (same for y). The map is evaluated by broadcasting (what ``affine_grid`` computes, without
    its batched matmul, several times slower on CPU), keeping ``v`` for the fill test.
    """
    height, width = float(in_size[0]), float(in_size[1])
    radians = torch.deg2rad(params.angle)
    inverse_scale = 1.0 / params.scale
    cos, sin = torch.cos(radians) * inverse_scale, torch.sin(radians) * inverse_scale
    a, b, c, d = cos, sin, -sin, cos  # M, row by row
    if params.rot90 is not None:  # Q M, with Q's entries in {-1, 0, 1}
        turns = params.rot90
        q_cos = (turns == 0).to(cos.dtype) - (turns == 2).to(cos.dtype)
        q_sin = (turns == 1).to(cos.dtype) - (turns == 3).to(cos.dtype)
        a, b, c, d = (
            q_cos * a - q_sin * c,
            q_cos * b - q_sin * d,
            q_sin * a + q_cos * c,
            q_sin * b + q_cos * d,
        )
    tx, ty = (2.0 / size * params.translate).unbind(dim=1)
    coords = (torch.arange(size, device=cos.device, dtype=cos.dtype) * 2 + 1) / size - 1
    x, y = coords.view(1, 1, size), coords.view(1, size, 1)

    def column(values: torch.Tensor) -> torch.Tensor:
        return values.view(-1, 1, 1)

    # (B, 1, S) + (B, S, 1): one full-size addition each.
    inner_x = (column(a) * x - column(a * tx + b * ty)) + column(b) * y
    inner_y = (column(c) * x - column(c * tx + d * ty)) + column(d) * y
    outside = (inner_x.abs() > 1.0) | (inner_y.abs() > 1.0)
    top, left, h, w = params.crop.unbind(dim=1)
    scale_x = torch.where(params.hflip, -1.0, 1.0) * w / width
    scale_y = torch.where(params.vflip, -1.0, 1.0) * h / height
    # Written into the two planes of one (B, S, S, 2) tensor: cheaper than stacking them.
    grid = torch.empty((*inner_x.shape, 2), device=inner_x.device, dtype=inner_x.dtype)
    torch.addcmul(column((2 * left + w) / width - 1), inner_x, column(scale_x), out=grid[..., 0])
    torch.addcmul(column((2 * top + h) / height - 1), inner_y, column(scale_y), out=grid[..., 1])
    grid[..., 0].masked_fill_(outside, _OUTSIDE)
    return grid
