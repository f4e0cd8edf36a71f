"""Attribution maps over tensors and models: pixel occlusion, Grad-CAM, slice occlusion.

Everything here is a pure function of a model callable and tensors, so any model plugs in:

* a **slice classifier** ``images (B, C, H, W) -> logits (B, K)`` (for the hierarchical model:
  the model applied to bags of one slice, see :func:`hierarchical_slice_classifier`);
* a **bag classifier** ``images (B, N, C, H, W), mask (B, N) bool -> logits (B, K)`` for
  patient-level models (slice occlusion).

Conventions
-----------
Occlusion attribution is the **drop** of the target class's probability when a region (or a
slice) is hidden: ``p(target | x) - p(target | x with the region occluded)``. Positive means the
region supported the prediction; negative means hiding it made the class *more* likely. (MONAI's
``OcclusionSensitivity`` reports the occluded probability itself, where more negative means more
important; we report the drop so that "bigger = mattered more" for both methods.)

The occluded window is filled with the **per-channel mean intensity of the slice** by default.
Zero would be "air": inside the head a black square is itself a strong, unnatural feature (dark
hole, sharp edges) the network may react to, and in zero-padded MRI it is also the background
value, so it hides nothing there. A blurred copy keeps the low frequencies of a bright tumour, so
the tumour would still be "there" and its importance under-estimated. The slice mean carries no
local information and keeps the slice's overall brightness. ``baseline="zero"`` or a number can be
chosen instead.

Why not MONAI's classes: ``monai.visualize.OcclusionSensitivity`` places windows with
sliding-window inference parametrised by an *overlap fraction*, not by the stride asked for here,
and reports occluded probabilities (opposite sign); ``monai.visualize.GradCAM`` min-max
normalises every map to [0, 1] by default, which shifts the maps' zero level and so changes the
"share of positive attribution inside the tumour" we quantify. Both methods are a few lines of
torch, written out below so their conventions are explicit and tested.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

SliceClassifier = Callable[[torch.Tensor], torch.Tensor]  # (B, C, H, W) -> logits (B, K)
BagClassifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B,N,C,H,W),(B,N) -> (B,K)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Top-left offsets of the windows along one axis: 0, stride, 2·stride, … and always the
    last position ``length - window``, so every pixel is covered (the final step may be shorter
    than ``stride``)."""
    if not 1 <= window <= length:
        raise ValueError(f"window {window} must be between 1 and the image side {length}")
    if stride < 1:
        raise ValueError(f"stride must be ≥ 1, not {stride}")
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def fill_value(image: torch.Tensor, baseline: str | float = "mean") -> torch.Tensor:
    """What fills an occluded window of ``image`` (C, H, W): a (C, 1, 1) tensor."""
    channels = image.shape[0]
    if baseline == "mean":
        return image.float().mean(dim=(1, 2)).view(channels, 1, 1)
    if baseline == "zero":
        return image.new_zeros(channels, 1, 1, dtype=torch.float32)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return image.new_full((channels, 1, 1), float(baseline), dtype=torch.float32)
    raise ValueError(f"baseline must be 'mean', 'zero' or a number, not {baseline!r}")


def target_probability(logits: torch.Tensor, target: int, temperature: float = 1.0) -> torch.Tensor:
    """Softmax probability of class ``target`` for each row of ``logits`` (B, K) → (B,)."""
    return torch.softmax(logits.float() / temperature, dim=-1)[:, target]


@torch.no_grad()
def occlusion_map(
    classifier: SliceClassifier,
    image: torch.Tensor,
    target: int,
    window: int,
    stride: int,
    baseline: str | float = "mean",
    batch_size: int = 64,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Occlusion sensitivity of one slice ``image`` (C, H, W) → map (H, W), float32.

    Each window (``window`` × ``window`` pixels, moved by ``stride``) is filled with the
    baseline (see the module docstring) and the drop ``p(target | image) - p(target | occluded)``
    is computed. A pixel's value is the mean drop over all windows that cover it, so the map is
    in probability units, in [-1, 1], with the image's own row/column layout.
    """
    image = image.float()
    _, height, width = image.shape
    device = image.device
    reference = target_probability(classifier(image[None]), target, temperature)[0]
    fill = fill_value(image, baseline).to(device)
    boxes = [
        (top, left)
        for top in window_starts(height, window, stride)
        for left in window_starts(width, window, stride)
    ]
    total = torch.zeros(height, width, device=device)
    count = torch.zeros(height, width, device=device)
    for first in range(0, len(boxes), batch_size):
        chunk = boxes[first : first + batch_size]
        occluded = image.expand(len(chunk), -1, -1, -1).clone()
        for i, (top, left) in enumerate(chunk):
            occluded[i, :, top : top + window, left : left + window] = fill
        drops = reference - target_probability(classifier(occluded), target, temperature)
        for drop, (top, left) in zip(drops, chunk, strict=True):
            total[top : top + window, left : left + window] += drop
            count[top : top + window, left : left + window] += 1
    return (total / count).cpu()


def gradcam_maps(
    classifier: SliceClassifier,
    layer: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | list[int],
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017) of ``images`` (B, C, H, W) → maps (B, H, W).

    ``layer`` is a module inside ``classifier`` whose output is a (B, D, h, w) feature map (the
    last convolutional block). For each image: channel weights = the spatial mean of the gradient
    of the target class's *logit* with respect to that feature map; map = ReLU(Σ_d weight_d ·
    feature_d), bilinearly upsampled to (H, W). Values are non-negative and not normalised (in
    logit-per-feature units): compare maps of one model, not across models.
    """
    targets = torch.as_tensor(targets, dtype=torch.long, device=images.device)
    captured: dict[str, torch.Tensor] = {}

    def keep_output(module, inputs, output):
        captured["features"] = output

    handle = layer.register_forward_hook(keep_output)
    try:
        with torch.enable_grad():
            # inputs requiring grad make sure a graph exists even when the weights are frozen
            inputs = images.detach().float().requires_grad_(True)
            logits = classifier(inputs)
            if "features" not in captured:
                raise RuntimeError("the Grad-CAM layer was not called by the classifier")
            features = captured["features"]
            score = logits.float().gather(1, targets[:, None]).sum()
            (gradients,) = torch.autograd.grad(score, features)
    finally:
        handle.remove()
    weights = gradients.float().mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * features.detach().float()).sum(dim=1, keepdim=True))
    if cam.shape[-2:] != images.shape[-2:]:
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return cam[:, 0].detach().cpu()


@torch.no_grad()
def slice_occlusion(
    bag_classifier: BagClassifier,
    images: torch.Tensor,
    target: int,
    temperature: float = 1.0,
    batch_size: int = 16,
) -> torch.Tensor:
    """Drop of ``p(target | bag)`` when each slice is removed from the bag: (N, C, H, W) → (N,).

    A slice is removed through the bag's padding mask (so the model sees an (N-1)-slice bag,
    exactly like a patient who had one slice fewer), not by blanking its pixels. Positive: the
    slice supported the prediction. A one-slice bag cannot lose its only slice: NaN.
    """
    n = images.shape[0]
    if n < 2:
        return torch.full((n,), float("nan"))
    full = torch.ones(1, n, dtype=torch.bool, device=images.device)
    reference = target_probability(bag_classifier(images[None], full), target, temperature)[0]
    drops = []
    for first in range(0, n, batch_size):
        left_out = torch.arange(first, min(first + batch_size, n), device=images.device)
        mask = torch.ones(len(left_out), n, dtype=torch.bool, device=images.device)
        mask[torch.arange(len(left_out)), left_out] = False
        bags = images.expand(len(left_out), *images.shape)
        probability = target_probability(bag_classifier(bags, mask), target, temperature)
        drops.append(reference - probability)
    return torch.cat(drops).cpu()


# ------------------------------------------------------------------ the hierarchical model


def hierarchical_bag_classifier(model: nn.Module) -> BagClassifier:
    """The two-step model's tumour-type logits for bags of slices."""

    def classify(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(images, mask)["type_logits"]

    return classify


class BagOfOne(nn.Module):
    """A patient-level model as a slice classifier: each slice is a bag of its own, so the
    pooling passes its features through unchanged and the type head scores that slice alone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(images.shape[0], 1, dtype=torch.bool, device=images.device)
        return self.model(images[:, None], mask)["type_logits"]


def hierarchical_slice_classifier(model: nn.Module) -> BagOfOne:
    return BagOfOne(model)


def last_conv_block(model: nn.Module) -> nn.Module | None:
    """The Grad-CAM layer: the last block of the first :class:`Encoder`'s body inside
    ``model`` (the encoder's final feature map), or None when the model has no Encoder."""
    from mritumor.models.backbones import Encoder

    for module in model.modules():
        if isinstance(module, Encoder):
            body = module.body
            children = list(body.children())
            return children[-1] if children else body
    return None
