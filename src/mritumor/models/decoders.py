"""Segmentation decoders over a registry encoder's feature maps.

``fcn``: the seed's head — one 3×3 "neck" on the encoder's last features, a 1×1 score and
bilinear upsampling (plus an FCN-8s skip for coarse light encoders; see
:mod:`mritumor.models.multitask`). ``unet``: a U-Net decoder (Ronneberger et al. 2015) that walks
back up through every resolution the encoder passed, concatenating that stage's features at
each step, so boundaries come from full-detail features instead of a stride-8/32 map.

The encoder's stages are found by probing its body once: the last layer at each resolution is
a skip. This works for every encoder of the registry (small_cnn, mobilenet_v2, resnet18/50 and
the dilated FCN-ResNet50, whose last three stages share stride 8 and give one skip).
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn

DECODERS = ("unet", "fcn")


@torch.no_grad()
def stage_outputs(body: nn.Sequential, in_channels: int, image_size: int) -> list[tuple[int, int]]:
    """(layer index, channels) of the last layer at each resolution of ``body``, finest first."""
    was_training = body.training
    body.eval()
    x = torch.zeros(1, in_channels, image_size, image_size)
    stages: dict[int, tuple[int, int]] = {}
    for index, layer in enumerate(body):
        x = layer(x)
        stages[x.shape[-1]] = (index, x.shape[1])  # later layers at a resolution replace earlier
    body.train(was_training)
    return [stages[size] for size in sorted(stages, reverse=True)]


def decoder_width(stride: int) -> int:
    """Channels of the decoder block at one stride: narrow where maps are large (the cost of a
    3×3 convolution grows with pixels × channels²), as in U-Net's halving per level."""
    return int(min(256, max(16, 8 * stride)))


class UNetDecoder(nn.Module):
    """Bottleneck (B, C₀, h, w) + skips (finest first) → (B, out_width, S, S) features.

    Each block upsamples to the skip's exact size (bilinear), concatenates and applies MONAI's
    ``TwoConv`` (conv-norm-act twice). Upsampling to the exact size, not by a fixed factor, is
    what lets any input size through: encoders round odd sizes up (strided convolutions) or
    down (pooling), and MONAI's ``UpCat`` pads by one pixel only, which fails for the former.
    A last block at the input size has no skip (none is needed when the finest skip is at it)."""

    def __init__(self, bottleneck_width: int, skip_widths: list[int], skip_strides: list[int]):
        super().__init__()
        from monai.networks.nets.basic_unet import TwoConv

        blocks, width = [], bottleneck_width
        for skip_width, stride in zip(reversed(skip_widths), reversed(skip_strides), strict=True):
            out = decoder_width(stride)
            blocks.append(TwoConv(2, width + skip_width, out, "relu", "batch", bias=False))
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.out_width = decoder_width(1)
        # encoders whose first stage keeps the input size (small_cnn) already ended at it
        self.final = (
            nn.Identity()
            if skip_strides and min(skip_strides) == 1
            else TwoConv(2, width, self.out_width, "relu", "batch", bias=False)
        )

    def forward(
        self, bottleneck: torch.Tensor, skips: list[torch.Tensor], size: tuple[int, int]
    ) -> torch.Tensor:
        x = bottleneck
        for block, skip in zip(self.blocks, reversed(skips), strict=True):
            x = nnf.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        x = nnf.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.final(x)
