"""Slice encoders, looked up by name: one registry for pretraining and supervised models.

An :class:`Encoder` maps (B, C, S, S) images to (B, feature_dim) features. Its state-dict
keys are the same wherever it is used, so SimCLR's ``encoder.*`` weights load into the
hierarchical model's backbone unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mritumor.errors import MritumorError

BACKBONES: dict[str, Callable[[int, bool], tuple[nn.Module, int]]] = {}


def register(name: str):
    def decorate(builder):
        BACKBONES[name] = builder
        return builder

    return decorate


@dataclass(frozen=True)
class EncoderConfig:
    name: str = "mobilenet_v2"
    in_channels: int = 1
    image_size: int = 224
    feature_dim: int = 0  # filled in by build_encoder
    # ImageNet weights expect ImageNet-standardised inputs; slices arrive in [0, 1].
    input_normalisation: str = "none"  # "none" | "imagenet"

    def to_dict(self) -> dict:
        return asdict(self)


class Encoder(nn.Module):
    """Convolutional body + global average pooling → feature vector."""

    def __init__(self, body: nn.Module, feature_dim: int, config: EncoderConfig):
        super().__init__()
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = feature_dim
        self.config = config
        mean, std = input_statistics(config.input_normalisation, config.in_channels)
        # not persistent: derived from the config, so state dicts are the same for every setting
        self.register_buffer("input_mean", mean, persistent=False)
        self.register_buffer("input_std", std, persistent=False)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.input_normalisation != "none":
            images = (images - self.input_mean) / self.input_std
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.feature_map(images)), 1)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def input_statistics(normalisation: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std applied to inputs. A grayscale slice gets the average ImageNet
    statistics, matching the summed first-layer filters of :func:`adapt_first_conv`."""
    if normalisation == "none":
        return torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)
    if normalisation != "imagenet":
        raise MritumorError(f"unknown input normalisation {normalisation!r}")
    if channels == 3:
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    else:
        mean = torch.full((channels,), sum(IMAGENET_MEAN) / 3)
        std = torch.full((channels,), sum(IMAGENET_STD) / 3)
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)


def build_encoder(
    name: str, in_channels: int = 1, image_size: int = 224, pretrained: bool = False
) -> Encoder:
    if name not in BACKBONES:
        raise MritumorError(
            f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}"
        )
    if in_channels < 1:
        raise MritumorError("in_channels must be ≥ 1")
    body, feature_dim = BACKBONES[name](in_channels, pretrained)
    normalisation = "imagenet" if pretrained else "none"
    config = EncoderConfig(name, in_channels, image_size, feature_dim, normalisation)
    return Encoder(body, feature_dim, config)


def encoder_from_config(config: dict) -> Encoder:
    """The architecture a checkpoint describes (its weights are loaded by the caller)."""
    if config.get("name") not in BACKBONES:
        raise MritumorError(f"unknown backbone {config.get('name')!r} in checkpoint")
    body, feature_dim = BACKBONES[config["name"]](config["in_channels"], False)
    known = {k: v for k, v in config.items() if k in EncoderConfig.__dataclass_fields__}
    return Encoder(body, feature_dim, EncoderConfig(**{**known, "feature_dim": feature_dim}))


# --------------------------------------------------------------------------- torchvision models


def _torchvision_weights(name: str):
    import torchvision.models as tvm

    return {
        "mobilenet_v2": tvm.MobileNet_V2_Weights.IMAGENET1K_V1,
        "resnet18": tvm.ResNet18_Weights.IMAGENET1K_V1,
        "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1,
    }[name]


def local_imagenet_state(name: str) -> dict:
    """ImageNet weights from the local torch cache only: nothing is ever downloaded."""
    weights = _torchvision_weights(name)
    filename = Path(weights.url).name
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise MritumorError(
            f"--pretrained needs the ImageNet weights of {name}, which are not in the local torch cache. "
            f"Place the file {filename} at {path} (it is published at {weights.url}); mritumor never "
            "downloads weights itself."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A first convolution for ``in_channels`` inputs. Pretrained RGB filters are averaged and
    repeated, so a grayscale MRI gets the same response as a gray RGB image would."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        mean = conv.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * 3 / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


@register("mobilenet_v2")
def _mobilenet_v2(in_channels: int, pretrained: bool):
    import torchvision.models as tvm

    model = tvm.mobilenet_v2(weights=None)
    if pretrained:
        model.load_state_dict(local_imagenet_state("mobilenet_v2"))
    model.features[0][0] = adapt_first_conv(model.features[0][0], in_channels)
    return model.features, model.last_channel


def _resnet(name: str, in_channels: int, pretrained: bool):
    import torchvision.models as tvm

    model = getattr(tvm, name)(weights=None)
    if pretrained:
        model.load_state_dict(local_imagenet_state(name))
    model.conv1 = adapt_first_conv(model.conv1, in_channels)
    body = nn.Sequential(
        model.conv1,
        model.bn1,
        model.relu,
        model.maxpool,
        model.layer1,
        model.layer2,
        model.layer3,
        model.layer4,
    )
    return body, model.fc.in_features


@register("resnet18")
def _resnet18(in_channels: int, pretrained: bool):
    return _resnet("resnet18", in_channels, pretrained)


@register("resnet50")
def _resnet50(in_channels: int, pretrained: bool):
    return _resnet("resnet50", in_channels, pretrained)


@register("small_cnn")
def _small_cnn(in_channels: int, pretrained: bool):
    """Four conv blocks: a fast CPU baseline (the seed's SmallCNN); no ImageNet weights exist."""
    if pretrained:
        raise MritumorError("small_cnn has no ImageNet weights; drop --pretrained")
    layers, channels = [], in_channels
    for width in (32, 64, 128, 256):
        layers += [
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        channels = width
    return nn.Sequential(*layers), channels
