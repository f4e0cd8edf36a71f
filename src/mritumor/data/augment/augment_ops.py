"""The tensor kernels of :class:`mritumor.data.augment.batch_augment.BatchAugment`, one per op.

Each takes a batch and its per-sample parameters as tensors on the batch's device and works on
all samples at once, with no read-back to the host (the module doc of ``batch_augment`` says
which library op each reproduces; ``tests/test_batch_augment.py`` checks them against it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_GAMMA_EPSILON = 1e-7  # MONAI AdjustContrast's epsilon
_CROP_TRIES = 10  # torchvision RandomResizedCrop's rejection-sampling attempts


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
    (equal to torchvision's single 2-D conv up to float rounding). A batch of one (the
    per-sample wrapper in DataLoader workers) takes ``k`` shifted multiply-adds per pass
    instead: on a CPU the convolution's fixed cost dominates there (224 px, k = 9: 1.1 vs
    0.55 ms), while for whole batches the convolution is the faster one (0.5 vs 0.7 ms/slice)."""
    batch, channels, height, width = images.shape
    size = kernels.shape[1]
    half = size // 2
    if batch == 1:  # a shape, not a value: no host read-back
        padded = F.pad(images, (half, half, half, half), mode="reflect")
        weights = kernels.view(1, 1, 1, 1, size)
        out = _shifted_sum(padded, weights, height)  # along rows: (1, C, H, W + 2 half)
        return _shifted_sum(out.transpose(-1, -2), weights, width).transpose(-1, -2)
    weight = kernels.repeat_interleave(channels, dim=0)  # (B*C, k): channel c of sample b
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (half, half, half, half), mode="reflect")
    flat = F.conv2d(flat, weight.view(-1, 1, size, 1), groups=batch * channels)
    flat = F.conv2d(flat, weight.view(-1, 1, 1, size), groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


def _shifted_sum(padded: torch.Tensor, weights: torch.Tensor, length: int) -> torch.Tensor:
    """``sum_i weights[..., i] * padded[:, :, i : i + length]``: a 1-D kernel along dim 2."""
    out = weights[..., 0] * padded[:, :, :length]
    for i in range(1, weights.shape[-1]):
        out = out + weights[..., i] * padded[:, :, i : i + length]
    return out


def lowres_matrices(factor: torch.Tensor, on: torch.Tensor, size: int) -> torch.Tensor:
    """(B, S, S) matrices ``W = U D`` of simulated low resolution along one axis: ``D`` is
    ``F.interpolate``'s bilinear + antialias downsampling from S to ``n = max(1, round(f S))``
    pixels (triangle filter of half-width ``S / n`` around each low-res pixel centre, normalised
    over the image), ``U`` its bilinear (``align_corners=False``) upsampling back to S (source
    coordinate clamped to [0, n - 1] as PyTorch does). Identity where ``on`` is False.

    Why matrices: every sample has its own low-res size, so the low-res images do not fit one
    tensor; padding the low-res axis to S (rows of ``D`` / columns of ``U`` past ``n`` are zero)
    makes the whole batch one batched matmul per axis, exact and without a host round-trip."""
    device, dtype = factor.device, torch.float32
    low = torch.round(factor.to(dtype) * size).clamp_min(1.0).view(-1, 1, 1)  # n, (B, 1, 1)
    ratio = size / low  # input pixels per low-res pixel
    pixels = torch.arange(size, device=device, dtype=dtype)
    lattice = pixels.view(1, size, 1)  # low-res index j (rows of D)
    source = pixels.view(1, 1, size)  # full-res index i (columns of D)
    down = (1.0 - ((source + 0.5 - ratio * (lattice + 0.5)) / ratio).abs()).clamp_min(0.0)
    down = torch.where(lattice < low, down, 0.0)
    down = down / down.sum(dim=2, keepdim=True).clamp_min(1e-12)
    position = ((pixels.view(1, size, 1) + 0.5) / ratio - 0.5).clamp_min(0.0)  # output i
    position = torch.minimum(position, low - 1.0)
    up = (1.0 - (position - pixels.view(1, 1, size)).abs()).clamp_min(0.0)  # (B, S_out, S_low)
    up = torch.where(pixels.view(1, 1, size) < low, up, 0.0)
    matrices = up @ down
    identity = torch.eye(size, device=device, dtype=dtype).expand_as(matrices)
    return torch.where(on.view(-1, 1, 1), matrices, identity)


def low_resolution(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Apply (B, S, S) ``lowres_matrices`` to (B, C, S, S) images along both axes."""
    weights = matrices[:, None]
    return weights @ images @ weights.transpose(-1, -2)


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
