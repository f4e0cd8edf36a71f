"""Batched, device-agnostic version of :mod:`mritumor.data.transforms`.

:class:`BatchAugment` takes a whole batch ``images (B, C, H, W)`` float (and optionally
``masks (B, 1, H, W)``) on any device and returns ``(B, C, S, S)`` float32 images clipped to
[0, 1] and ``(B, 1, S, S)`` uint8 masks, with the same random distribution as the per-sample CPU
pipeline built by :func:`mritumor.data.transforms.build_transform` for the same config. Every
random parameter is drawn for the whole batch at once as a tensor on the device (from a
``torch.Generator`` of that device, or its global RNG), and every op is applied to all samples
with ``torch.where`` selecting, per sample, whether it took effect: there is no Python loop over
samples, no Python branch on a random value and no device-to-host copy (``.item()``, ``.cpu()``,
``.tolist()``) anywhere in the batch path, so on CUDA a batch is queued without synchronising.

Which CPU op each batched op reproduces, in the CPU pipeline's order:

* ``v2.RandomResizedCrop`` (``_AlignedRandomResizedCrop``) -> flips -> ``v2.RandomAffine``:
  composed into one affine map per sample, evaluated on the output pixel grid (what
  ``affine_grid`` computes) and applied by one ``grid_sample`` - bilinear for images, nearest for
  masks, the same map for both. The crop parameters follow torchvision's procedure exactly
  (area and log-aspect draws, up to 10 tries of rejection sampling, the central fallback,
  uniform integer offsets), vectorised; flips are Bernoulli(p) sign changes; the affine has the
  same angle / integer-pixel translation / scale laws and torchvision's inverse matrix. Output
  pixels the CPU affine fills with 0 (sourced from outside the crop) are 0 here too.
* MONAI ``RandBiasField``: ``x * exp(sum_{i>=j} c_ij P_i(y) P_j(x))``, Legendre polynomials,
  coefficients uniform in ``bias_field_coeff`` laid out as ``np.tril_indices``.
* MONAI ``RandAdjustContrast``: gamma on each sample's min-max range, same epsilon.
* ``v2.GaussianBlur`` in ``v2.RandomApply``: torchvision's kernel formula and size, one sigma per
  sample, reflect padding, as two grouped 1-D convolutions.
* ``v2.GaussianNoise(clip=False)`` in ``v2.RandomApply``: ``x + std * randn``.
* the final clip: ``nan_to_num`` then clamp to [0, 1].
* ``EvalTransform`` (``kind='eval'``): ``interpolate`` bilinear + antialias for images and
  nearest-exact for masks, only when the size differs: identical output.

Each op with a probability is computed for every sample and kept where a per-sample Bernoulli
draw says so (``torch.where``; a blur that is off uses a delta kernel, a bias field that is off
zero coefficients). The CPU path skips ops that were not drawn, so on a CPU the batched path
does more arithmetic per slice; its point is running on the accelerator.

Known differences from the CPU path (all in the geometry, none in the distribution of the
random parameters):

* The CPU path resamples twice (bilinear crop-resize, then a *nearest* affine: v2.RandomAffine's
  default interpolation); here the composed matrix is applied once, bilinearly. Images are
  therefore a little smoother (no nearest-neighbour jaggies, no second interpolation) and masks
  are resampled once with nearest instead of twice, so a mask edge can differ by a pixel.
* Samples at the very border of the crop window are interpolated with the real neighbouring
  pixels (or zeros at the image border) where torchvision's resize clamps to the crop's edge.
* When the input is *larger* than the output size, torchvision's resize is antialiased;
  ``grid_sample`` is not. Cached slices already have the output size (the normal case), so
  crops are upsampled and antialiasing does not apply.
* Random streams differ: the same seed gives different (equally distributed) draws.
* Bias field and gamma are computed in float32 (MONAI computes the field in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from mritumor.data.transforms import SSL_CONFIG, AugmentConfig

__all__ = [
    "AugmentParams",
    "BatchAugment",
    "adjust_gamma",
    "bias_field",
    "build_batch_augment",
    "gaussian_blur",
    "gaussian_kernels",
    "geometry_grid",
    "resize_batch",
    "sample_crop_boxes",
]

KINDS = ("train", "ssl", "eval")
_GAMMA_EPSILON = 1e-7  # MONAI AdjustContrast's epsilon
_CROP_TRIES = 10  # torchvision RandomResizedCrop's rejection-sampling attempts
_OUTSIDE = -4.0  # a grid coordinate whose bilinear / nearest neighbours all lie outside


@dataclass
class AugmentParams:
    """Per-sample random parameters of one batch, all tensors of leading size B on the device.

    ``crop``: (B, 4) float ``top, left, height, width`` in input pixels (integers, as
    torchvision draws them). ``hflip``/``vflip``: (B,) bool. ``angle``: (B,) degrees.
    ``translate``: (B, 2) integer pixels ``(tx, ty)`` of the output. ``scale``: (B,).
    ``bias_coeff``: (B, K) Legendre coefficients (zeros where the op is off). ``gamma``: (B,)
    with ``gamma_on`` (B,) bool. ``blur_sigma``: (B,) with ``blur_on``. ``noise_std``: (B,)
    (zero where the op is off). Ops removed by the config hold ``None``."""

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
        # Ops the config removes altogether, exactly as transforms.py drops them.
        self._has_affine = c.rotate_degrees > 0 or c.translate > 0 or c.scale != (1.0, 1.0)
        self._identity_geometry = (
            c.crop_scale == (1.0, 1.0)
            and c.crop_ratio == (1.0, 1.0)
            and c.hflip_p == 0
            and c.vflip_p == 0
            and not self._has_affine
        )
        self._has_bias = c.bias_field_p > 0 and c.bias_field_coeff != (0.0, 0.0)
        self._has_gamma = c.gamma_p > 0 and c.gamma != (1.0, 1.0)
        self._has_blur = c.blur_p > 0
        self._has_noise = c.noise_p > 0 and c.noise_std > 0
        self.blur_kernel_size = 2 * math.ceil(2 * c.blur_sigma[1]) + 1  # as transforms.py
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
        if self._has_bias:
            on = bernoulli(c.bias_field_p)
            coeff = uniform(*c.bias_field_coeff, self.bias_terms)
            params.bias_coeff = torch.where(on[:, None], coeff, torch.zeros_like(coeff))
        if self._has_gamma:
            params.gamma_on, params.gamma = bernoulli(c.gamma_p), uniform(*c.gamma)
        if self._has_blur:
            params.blur_on, params.blur_sigma = bernoulli(c.blur_p), uniform(*c.blur_sigma)
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
            # Whole-image crop, no flip, no affine: the CPU path returns the pixels unchanged.
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
    """The batched counterpart of :func:`mritumor.data.transforms.build_transform`."""
    return BatchAugment(config, size, kind)


# -------------------------------------------------------------------- geometry


def sample_crop_boxes(
    batch: int,
    in_size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """v2.RandomResizedCrop's ``make_params`` for a whole batch: (B, 4) ``top, left, h, w``.

    The same procedure, vectorised: 10 candidate (area, log-aspect) draws per sample, ``w`` and
    ``h`` rounded half-to-even like Python's ``round``, the first candidate that fits is kept
    (``argmax`` of the fit mask), otherwise torchvision's central fallback crop; then the
    offset is a uniform integer in ``[0, H - h]`` / ``[0, W - w]``."""
    height, width = int(in_size[0]), int(in_size[1])
    shape = (batch, _CROP_TRIES)
    u_area = torch.rand(shape, generator=generator, device=device)
    u_ratio = torch.rand(shape, generator=generator, device=device)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * u_ratio)
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.float32).argmax(dim=1, keepdim=True)  # first fitting try, else 0
    found = fits.any(dim=1)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    fallback_h, fallback_w = _fallback_crop(height, width, ratio)
    w = torch.where(found, w, float(fallback_w))
    h = torch.where(found, h, float(fallback_h))
    u_top, u_left = torch.rand((2, batch), generator=generator, device=device)
    top = torch.minimum(torch.floor(u_top * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(u_left * (width - w + 1)), width - w)
    top = torch.where(found, top, float((height - fallback_h) // 2))
    left = torch.where(found, left, float((width - fallback_w) // 2))
    return torch.stack([top, left, h, w], dim=1)


def _fallback_crop(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def geometry_grid(params: AugmentParams, in_size: tuple[int, int], size: int) -> torch.Tensor:
    """The ``grid_sample`` grid (B, S, S, 2) of crop -> flips -> affine, one affine map per
    sample. Output pixels that the CPU affine fills with 0 (their source lies outside the crop)
    are sent far outside the image, so ``grid_sample``'s zero padding fills them.

    Coordinates are ``align_corners=False`` normalised ([-1, 1] spans pixel edges). The affine
    is torchvision's inverse matrix ``M = R(-angle) / scale`` about the centre, pulling output
    ``u`` from ``v = M (u - 2 t / S)`` of the flipped crop, which must lie in [-1, 1]^2; the
    flips negate ``v_x`` / ``v_y``; the crop maps ``v`` to ``(w / W) v_x + (2 left + w) / W - 1``
    (same for y). The map is evaluated by broadcasting (what ``affine_grid`` computes, without
    its batched matmul, several times slower on CPU), keeping ``v`` for the fill test.
    """
    height, width = float(in_size[0]), float(in_size[1])
    radians = torch.deg2rad(params.angle)
    inverse_scale = 1.0 / params.scale
    cos, sin = torch.cos(radians) * inverse_scale, torch.sin(radians) * inverse_scale
    tx, ty = (2.0 / size * params.translate).unbind(dim=1)
    coords = (torch.arange(size, device=cos.device, dtype=cos.dtype) * 2 + 1) / size - 1
    x, y = coords.view(1, 1, size), coords.view(1, size, 1)

    def column(values: torch.Tensor) -> torch.Tensor:
        return values.view(-1, 1, 1)

    # (B, 1, S) + (B, S, 1): one full-size addition each.
    inner_x = (column(cos) * x - column(cos * tx + sin * ty)) + column(sin) * y
    inner_y = (column(-sin) * x - column(-sin * tx + cos * ty)) + column(cos) * y
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


def resize_batch(
    images: torch.Tensor, masks: torch.Tensor | None, size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``EvalTransform`` for a batch: identity at ``size``, else bilinear+antialias for images
    (v2.functional.resize) and pixel-centre nearest (NEAREST_EXACT) for masks."""
    images, masks = _validated(images, masks)
    if masks is not None:
        masks = masks.to(torch.uint8)
    if tuple(images.shape[-2:]) == (size, size):
        return images, masks
    images = F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    if masks is not None:
        masks = F.interpolate(masks.to(torch.float32), size=(size, size), mode="nearest-exact")
        masks = masks.to(torch.uint8)
    return images, masks


# -------------------------------------------------------------------- intensity


def bias_field(coeff: torch.Tensor, degree: int, size: int | tuple[int, int]) -> torch.Tensor:
    """MONAI RandBiasField's log-field for a batch: (B, 1, H, W) from (B, K) coefficients.

    ``field[y, x] = sum_{i >= j} c_ij P_i(y) P_j(x)`` with Legendre polynomials ``P`` on
    ``linspace(-1, 1)`` along each axis and the coefficients laid out in
    ``np.tril_indices(degree + 1)`` order (``K = (degree + 1)(degree + 2) / 2``), as MONAI's
    ``_generate_random_field`` with ``leggrid2d``. The image is multiplied by ``exp(field)``
    (the same field for every channel, as MONAI does)."""
    height, width = (size, size) if isinstance(size, int) else size
    device = coeff.device
    legendre_y = _legendre(torch.linspace(-1.0, 1.0, height, device=device), degree)
    legendre_x = _legendre(torch.linspace(-1.0, 1.0, width, device=device), degree)
    rows, cols = torch.tril_indices(degree + 1, degree + 1, device=device)
    basis = legendre_y[rows][:, :, None] * legendre_x[cols][:, None, :]  # (K, H, W)
    field = coeff.to(basis.dtype) @ basis.reshape(basis.shape[0], -1)
    return field.reshape(coeff.shape[0], 1, height, width)


def _legendre(x: torch.Tensor, degree: int) -> torch.Tensor:
    """(degree + 1, N): P_0..P_degree at x (Bonnet's recursion)."""
    values = [torch.ones_like(x), x]
    for n in range(1, degree):
        values.append(((2 * n + 1) * x * values[n] - n * values[n - 1]) / (n + 1))
    return torch.stack(values[: degree + 1])


def adjust_gamma(images: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """MONAI AdjustContrast per sample: ``((x - min) / (range + 1e-7)) ** g * range + min`` with
    ``min`` / ``range`` over each sample's channels and pixels together."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    spread = images.amax(dim=(1, 2, 3), keepdim=True) - low
    normalised = (images - low) / (spread + _GAMMA_EPSILON)
    return normalised.pow(_per_sample(gamma)) * spread + low


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, k) 1-D kernels exactly as torchvision's ``_get_gaussian_kernel1d``: softmax of
    ``-(x / sigma)^2`` over ``x = linspace(-l, l, k)``, ``l = (k - 1) / (2 sqrt 2)``."""
    limit = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-limit, limit, kernel_size, device=sigma.device)
    return torch.softmax(-((x[None, :] / sigma[:, None]) ** 2), dim=1)


def gaussian_blur(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """v2.GaussianBlur with a different (B, k) kernel per sample: reflect padding, then the
    separable 2-D kernel ``outer(k, k)`` as a column and a row pass of one grouped conv each
    (equal to torchvision's single 2-D conv up to float rounding)."""
    batch, channels, height, width = images.shape
    size = kernels.shape[1]
    weight = kernels.repeat_interleave(channels, dim=0)  # (B*C, k): channel c of sample b
    flat = images.reshape(1, batch * channels, height, width)
    half = size // 2
    flat = F.pad(flat, (half, half, half, half), mode="reflect")
    flat = F.conv2d(flat, weight.view(-1, 1, size, 1), groups=batch * channels)
    flat = F.conv2d(flat, weight.view(-1, 1, 1, size), groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


# -------------------------------------------------------------------- helpers


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, 1, 1, 1)


def _validated(
    images: torch.Tensor, masks: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not (isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] >= 1):
        raise ValueError(
            f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images))}"
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [0, 1], got {images.dtype}")
    images = images.to(torch.float32)
    if masks is not None and (
        not isinstance(masks, torch.Tensor)
        or masks.shape != (images.shape[0], 1, *images.shape[-2:])
    ):
        raise ValueError(
            f"masks must be a (B, 1, H, W) tensor matching images {tuple(images.shape)}, "
            f"got {getattr(masks, 'shape', type(masks))}"
        )
    return images, masks


def _clipped(images: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)
