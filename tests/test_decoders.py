"""The U-Net decoder: output size for every encoder and odd sizes, and that it segments better
than the FCN head on the same data and budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mritumor.losses import segmentation_loss
from mritumor.models.decoders import UNetDecoder, stage_outputs
from mritumor.models.multitask import MULTITASK_BACKBONES, build_multitask_model


@pytest.mark.parametrize("backbone", MULTITASK_BACKBONES)
@pytest.mark.parametrize("size", [100, 130])
def test_unet_mask_has_the_input_size_for_every_encoder(backbone, size):
    torch.manual_seed(0)
    model = build_multitask_model("F", 3, backbone, 1, size, decoder="unet").eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, size, size))
    assert out["mask_logits"].shape == (2, 1, size, size)
    assert out["class_logits"].shape == (2, 3)
    # one decoder block per encoder resolution finer than the bottleneck
    stages = stage_outputs(model.encoder.body, 1, size)
    assert len(model.decoder.blocks) == len(stages) - 1 == len(model.skip_layers)


def test_resnet18_skips_are_the_last_layer_of_each_stride():
    model = build_multitask_model("A", 3, "resnet18", 1, 128, decoder="unet")
    # body = conv1, bn1, relu, maxpool, layer1..layer4: strides 2 (relu), 4, 8, 16; 32 is X
    assert model.skip_layers == [2, 4, 5, 6]


def test_decoder_upsamples_to_each_skip_size():
    decoder = UNetDecoder(8, [4, 6], [2, 4]).eval()
    skips = [torch.rand(1, 4, 33, 33), torch.rand(1, 6, 17, 17)]  # rounded-up odd sizes
    with torch.no_grad():
        out = decoder(torch.rand(1, 8, 9, 9), skips, (65, 65))
    assert out.shape == (1, decoder.out_width, 65, 65)


def shapes_batch(rng: np.random.Generator, n: int, size: int = 48):
    """Noisy slices with three small bright discs or squares (radius 2–5 px) at random places:
    outlines finer than the FCN head's stride-8 logits."""
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, 1, size, size), np.float32)
    masks = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        inside = np.zeros((size, size), bool)
        for _ in range(3):
            r = rng.integers(2, 6)
            cy, cx = rng.integers(r, size - r, 2)
            if rng.random() < 0.5:
                inside |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            else:
                inside |= (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        masks[i, 0] = inside
        images[i, 0] = 0.3 + 0.4 * inside + rng.normal(0, 0.1, (size, size))
    return torch.from_numpy(images), torch.from_numpy(masks)


def dice(logits: torch.Tensor, masks: torch.Tensor) -> float:
    predicted = logits > 0
    overlap = (predicted & masks.bool()).sum().item()
    return 2 * overlap / (predicted.sum().item() + masks.sum().item())


def trained_dice(decoder: str, steps: int = 150) -> float:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_multitask_model("A", 2, "small_cnn", 1, 48, decoder=decoder)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        images, masks = shapes_batch(rng, 8)
        loss = segmentation_loss(model(images)["mask_logits"], masks)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    images, masks = shapes_batch(np.random.default_rng(1), 64)
    with torch.no_grad():
        return dice(model(images)["mask_logits"], masks)


def test_unet_segments_clearly_better_than_fcn_on_the_same_budget():
    unet, fcn = trained_dice("unet"), trained_dice("fcn")
    # the FCN head upsamples stride-8/16 logits: shapes of 4-10 px lose their outline
    assert unet > 0.7
    assert unet > fcn + 0.1, (unet, fcn)
