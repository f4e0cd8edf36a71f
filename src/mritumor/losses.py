"""Loss functions that are not in PyTorch or MONAI in the form the tasks need.

``nt_xent_loss`` is written here rather than taken from ``monai.losses.ContrastiveLoss`` (which
computes the same value, see the tests) because MONAI's version cannot take negatives from other
processes under DDP, and builds a dense (2N, 2N) cosine matrix through broadcasting, which is
slower and uses more memory than one matrix product.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def nt_xent_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: bool = True
) -> torch.Tensor:
    """NT-Xent, the normalised-temperature cross-entropy of SimCLR, for N positive pairs.

    ``z1[i]`` and ``z2[i]`` (each (N, D)) are the projections of two views of one item. With the
    2N views ``u = normalise(cat(z1, z2))`` (unit length, so ``u_i · u_k`` is the cosine
    similarity) and ``p(i)`` the other view of item i (``i + N`` or ``i - N``), the loss is

        ℓ_i = -log( exp(u_i · u_p(i) / τ) / Σ_{k ≠ i} exp(u_i · u_k / τ) )
        L   = (1 / 2N) Σ_i ℓ_i

    The denominator runs over every view except the anchor itself, its positive included (as in
    the SimCLR paper and ``monai.losses.ContrastiveLoss``).

    Under ``torch.distributed`` (initialised, world size W > 1) and ``gather=True``, the
    candidates k run over the 2NW views of all processes, so every process sees the others'
    negatives; the anchors i are this process's 2N views. The gather is differentiable: each
    process's embeddings receive the gradient of every process's loss, so after DDP averages the gradients the update is that of
    the mean loss over all 2NW anchors. Every process must pass the same N (the training loader
    drops its last incomplete batch; Lightning's distributed sampler pads validation).

    The loss is computed in float32 with autocast off: logits divided by a small τ overflow or
    lose precision in bf16/fp16.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n = z1.shape[0]
    with torch.autocast(device_type=z1.device.type, enabled=False):
        anchors = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, D)
        candidates, offset = anchors, 0
        if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            candidates = torch.cat(_GatherWithGradient.apply(anchors))  # (2NW, D); rank r at r·2N
            offset = dist.get_rank() * 2 * n
        logits = anchors @ candidates.T / temperature  # (2N, 2NW)
        local = torch.arange(2 * n, device=anchors.device)
        is_self = torch.zeros_like(logits, dtype=torch.bool)
        is_self[local, local + offset] = True
        logits = logits.masked_fill(is_self, float("-inf"))  # k ≠ i
        positives = (local + n) % (2 * n) + offset
        return F.cross_entropy(logits, positives)


class _GatherWithGradient(torch.autograd.Function):
    """``all_gather`` whose backward returns to each process the gradient that *all* processes'
    losses put on its embeddings (sum over processes, then this process's block).

    Written here because ``torch.distributed.nn.functional.all_gather`` is deprecated and its
    replacement lives in a private module; ``all_reduce`` works on gloo (CPU) and NCCL alike.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor):
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return tuple(gathered)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        summed = torch.stack(grads)
        dist.all_reduce(summed)  # Σ over processes of ∂loss_r / ∂(every process's block)
        return summed[dist.get_rank()]


SEG_LOSSES = ("dice_ce", "dice_focal", "tversky_ce")
# Tversky's weights of false positives and false negatives: missed tumour costs 0.7, extra 0.3
TVERSKY_ALPHA, TVERSKY_BETA = 0.3, 0.7


def segmentation_loss(
    mask_logits: torch.Tensor, masks: torch.Tensor, kind: str = "dice_ce"
) -> torch.Tensor:
    """Soft Dice over the whole batch + binary cross-entropy (MONAI ``DiceCELoss``), focal
    loss (``DiceFocalLoss``: down-weights the many easy background pixels), or ``tversky_ce``:
    the Tversky index in Dice's place (MONAI ``TverskyLoss``; false negatives weigh 0.7, false
    positives 0.3 — for models that under-segment, as gliomas are on figshare) + binary
    cross-entropy. Batch-wise: a slice without tumour has no Dice of its own, so per-slice Dice
    would be unstable there."""
    from monai.losses import DiceCELoss, DiceFocalLoss, TverskyLoss

    if kind == "dice_focal":
        return DiceFocalLoss(sigmoid=True, batch=True)(mask_logits, masks.float())
    if kind == "tversky_ce":
        target = masks.float()
        tversky = TverskyLoss(sigmoid=True, batch=True, alpha=TVERSKY_ALPHA, beta=TVERSKY_BETA)
        ce = torch.nn.functional.binary_cross_entropy_with_logits(mask_logits, target)
        return tversky(mask_logits, target) + ce
    if kind != "dice_ce":
        raise ValueError(f"unknown segmentation loss {kind!r}; choose one of {SEG_LOSSES}")
    return DiceCELoss(sigmoid=True, batch=True)(mask_logits, masks.float())
