"""Multi-task segmentation + classification of single slices (seed 004, variants A–G).

One network for all seven variants: a convolutional encoder, an FCN segmentation head and a
classification head; the variant decides which heads exist and which way information flows
between them. Shapes for a batch of B slices of C channels and S×S pixels, encoder features
of D channels at S/r × S/r (r = 8 for the dilated FCN-ResNet50, 32 or 16 for light backbones),
segmentation "neck" features of M = D/4 channels, classification embedding of H channels,
K classes::

    images (B,C,S,S) ─ encoder ─► X (B,D,h,w) ─┬─ seg_neck ─► N (B,M,h,w) ─ seg_out ─► mask (B,1,S,S)
                                               └─ GAP ─► (B,D) ─ cls_hidden ─► e (B,H) ─ cls_out ─► logits (B,K)

    A  segmentation only            (no classification head)
    B  classification only          (no segmentation head)
    C  frozen features              train A, then freeze encoder + segmentation head and train
                                    the classification head on the frozen X (two stages)
    D  naive joint                  both heads on the shared X, losses summed
    E  project-and-add logits       N ← N + W_E · logits   (broadcast over h, w), then seg_out
    F  segmentation embedding       classification input = [GAP(X), GAP(N)]
    G  penultimate embedding        N ← N + W_G · e        (broadcast over h, w), then seg_out

Light backbones have a coarse X (stride 16–32); their mask logits get an FCN-8s skip: the
stride-8 encoder features are scored by a 1×1 convolution and added to the upsampled coarse
logits (Long et al. 2015). The dilated FCN-ResNet50 already works at stride 8 and has no skip.

Classifying variants also output ``ood_features``: the per-channel mean and sd of the
encoder's last layer at each resolution (:func:`feature_statistics`), what the
out-of-distribution detector scores (:mod:`mritumor.evaluation.ood`, one block per resolution).

The encoder is a registry :class:`~mritumor.models.backbones.Encoder` (same state-dict keys as
everywhere), so ``simclr_pretrain.pt`` weights of the same backbone load into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn

from mritumor.errors import MritumorError
from mritumor.models.backbones import (
    BACKBONES,
    Encoder,
    EncoderConfig,
    adapt_first_conv,
    build_encoder,
    local_imagenet_state,
)
from mritumor.models.decoders import DECODERS, UNetDecoder, stage_outputs

VARIANTS = ("A", "B", "C", "D", "E", "F", "G")
VARIANT_NAMES = {
    "A": "Segmentation-only",
    "B": "Classification-only",
    "C": "Frozen-features classification",
    "D": "Naive joint training",
    "E": "Project-and-add fusion",
    "F": "Segmentation-informed classification",
    "G": "Penultimate embeddings fusion",
}
SEGMENTS = set("ACDEFG")
CLASSIFIES = set("BCDEFG")
MULTITASK_BACKBONES = ("fcn_resnet50", "resnet18", "mobilenet_v2", "small_cnn", "resnet50")


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise MritumorError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return variant


def fcn_resnet50_parts(
    in_channels: int, image_size: int, pretrained: bool
) -> tuple[Encoder, nn.Module]:
    """torchvision's ``fcn_resnet50`` (ResNet-50 dilated to output stride 8 + ``FCNHead``) as a
    registry encoder and its head. The encoder's body is laid out exactly like the registry's
    ``resnet50`` (dilation has no parameters), so a SimCLR ResNet-50 checkpoint loads into it."""
    from torchvision.models.segmentation import fcn_resnet50

    net = fcn_resnet50(weights=None, weights_backbone=None, num_classes=1, aux_loss=False)
    trunk = net.backbone  # IntermediateLayerGetter: conv1 … layer4
    if pretrained:
        state = local_imagenet_state("resnet50")
        trunk.load_state_dict(
            {k: v for k, v in state.items() if not k.startswith("fc.")}, strict=True
        )
    trunk.conv1 = adapt_first_conv(trunk.conv1, in_channels)
    body = nn.Sequential(
        trunk.conv1,
        trunk.bn1,
        trunk.relu,
        trunk.maxpool,
        trunk.layer1,
        trunk.layer2,
        trunk.layer3,
        trunk.layer4,
    )
    normalisation = "imagenet" if pretrained else "none"
    config = EncoderConfig("resnet50", in_channels, image_size, 2048, normalisation)
    return Encoder(body, 2048, config), net.classifier


def fcn_head(in_channels: int) -> nn.Sequential:
    """The structure of torchvision's ``FCNHead`` with one output channel (tumour logit)."""
    from torchvision.models.segmentation.fcn import FCNHead

    return FCNHead(in_channels, 1)


def build_parts(
    backbone: str, in_channels: int, image_size: int, pretrained: bool
) -> tuple[Encoder, nn.Module]:
    """(encoder, FCN head) for a backbone name."""
    if backbone == "fcn_resnet50":
        return fcn_resnet50_parts(in_channels, image_size, pretrained)
    if backbone not in BACKBONES:
        raise MritumorError(
            f"unknown backbone {backbone!r}; choose one of {', '.join(MULTITASK_BACKBONES)}"
        )
    encoder = build_encoder(backbone, in_channels, image_size, pretrained=pretrained)
    return encoder, fcn_head(encoder.feature_dim)


class MultiTaskNet(nn.Module):
    """See the module docstring for the seven variants' tensor flow."""

    def __init__(
        self,
        encoder: Encoder,
        head: nn.Module,
        variant: str,
        n_classes: int,
        image_size: int,
        hidden_dim: int = 256,
        dropout: float = 0.2,
        skip: bool = True,
        decoder: str = "fcn",
    ):
        super().__init__()
        if decoder not in DECODERS:
            raise MritumorError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
        self.variant = check_variant(variant)
        self.decoder_name = decoder
        self.segments, self.classifies = variant in SEGMENTS, variant in CLASSIFIES
        self.encoder, self.n_classes = encoder, n_classes
        width = encoder.feature_dim
        self.skip_layers: list[int] = []  # encoder layers whose outputs the decoder takes
        if self.segments:
            # FCNHead = [conv3x3 D→D/4, BN, ReLU, Dropout] (the neck) + conv1x1 → 1
            self.seg_neck, self.seg_out = nn.Sequential(*list(head)[:4]), head[4]
            neck_width = self.seg_out.in_channels
            if decoder == "unet":
                *finer, _ = stage_outputs(encoder.body, encoder.config.in_channels, image_size)
                strides = [self._stride(index, image_size) for index, _ in finer]
                self.skip_layers = [index for index, _ in finer]
                self.decoder = UNetDecoder(neck_width, [width for _, width in finer], strides)
                self.seg_out = nn.Conv2d(self.decoder.out_width, 1, 1)
            elif skip:
                skip_index, skip_width = self._find_skip(image_size)
                if skip_index is not None:
                    self.skip_layers = [skip_index]
                    self.skip_score = nn.Conv2d(skip_width, 1, 1)
        self.statistics_layers: list[int] = []  # encoder layers summarised for OOD scores
        self.ood_blocks: list[int] = []  # width of each layer's summary in ``ood_features``
        if self.classifies:
            stages = stage_outputs(encoder.body, encoder.config.in_channels, image_size)
            self.statistics_layers = [index for index, _ in stages]
            self.ood_blocks = [2 * channels for _, channels in stages]
            cls_in = width + (neck_width if variant == "F" else 0)
            self.cls_hidden = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(cls_in, hidden_dim), nn.ReLU(inplace=True)
            )
            self.cls_out = nn.Linear(hidden_dim, n_classes)
        if variant == "E":
            self.logit_projection = nn.Linear(n_classes, neck_width)
        if variant == "G":
            self.embedding_projection = nn.Linear(hidden_dim, neck_width)

    @torch.no_grad()
    def _find_skip(self, image_size: int) -> tuple[int | None, int]:
        """Index of the last encoder layer at stride 8, when the encoder's output is coarser."""
        probe = torch.zeros(1, self.encoder.config.in_channels, image_size, image_size)
        was_training = self.encoder.training
        self.encoder.eval()
        found, width, x = None, 0, probe
        for index, layer in enumerate(self.encoder.body):
            x = layer(x)
            if x.shape[-1] * 8 >= image_size:
                found, width = index, x.shape[1]
        self.encoder.train(was_training)
        last = len(self.encoder.body) - 1
        return (None, 0) if found in (None, last) else (found, width)

    @torch.no_grad()
    def _stride(self, layer_index: int, image_size: int) -> int:
        x = torch.zeros(1, self.encoder.config.in_channels, image_size, image_size)
        was_training = self.encoder.training
        self.encoder.eval()
        for layer in list(self.encoder.body)[: layer_index + 1]:
            x = layer(x)
        self.encoder.train(was_training)
        return max(1, round(image_size / x.shape[-1]))

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list]:
        """The encoder's last features, the outputs of ``skip_layers`` (finest first) and the
        feature statistics of ``statistics_layers``."""
        x = images
        if self.encoder.config.input_normalisation != "none":
            x = (x - self.encoder.input_mean) / self.encoder.input_std
        skips, statistics = [], []
        for index, layer in enumerate(self.encoder.body):
            x = layer(x)
            if index in self.skip_layers:
                skips.append(x)
            if index in self.statistics_layers and not self.training:  # no loss uses them
                statistics.append(feature_statistics(x))
        return x, skips, statistics

    def segmentation_modules(self) -> list[nn.Module]:
        names = ("seg_neck", "seg_out", "skip_score", "decoder")
        return [getattr(self, n) for n in names if hasattr(self, n)]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features, skips, statistics = self.encode(images)
        out: dict[str, torch.Tensor] = {}
        neck = self.seg_neck(features) if self.segments else None
        if self.classifies:
            pooled = features.mean(dim=(2, 3))
            if self.variant == "F":
                pooled = torch.cat([pooled, neck.mean(dim=(2, 3))], dim=1)
            embedding = self.cls_hidden(pooled)
            out["class_logits"] = self.cls_out(embedding)
            out["class_embedding"] = embedding
            if statistics:
                out["ood_features"] = torch.cat(statistics, dim=1)
        if self.segments:
            if self.variant == "E":
                neck = neck + self.logit_projection(out["class_logits"])[:, :, None, None]
            if self.variant == "G":
                neck = neck + self.embedding_projection(out["class_embedding"])[:, :, None, None]
            out["mask_logits"] = self.mask_logits(neck, skips, images.shape[-2:])
        return out

    def mask_logits(
        self, neck: torch.Tensor, skips: list[torch.Tensor], size: torch.Size
    ) -> torch.Tensor:
        if self.decoder_name == "unet":
            return self.seg_out(self.decoder(neck, skips, tuple(size)))
        logits = self.seg_out(neck)
        if skips:  # FCN-8s: the stride-8 features' score added to the upsampled coarse logits
            logits = nnf.interpolate(
                logits, size=skips[0].shape[-2:], mode="bilinear", align_corners=False
            )
            logits = logits + self.skip_score(skips[0])
        return nnf.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def to_channels_last(self) -> MultiTaskNet:
        return self.to(memory_format=torch.channels_last)


def feature_statistics(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → (B, 2C): each channel's mean and standard deviation over the pixels.
    What out-of-distribution scores use: the statistics of every resolution's features keep
    the low-level look of an image (sequence, scanner, corruption) that the classification
    embedding, trained to ignore it, has lost (bench_shift: LGG FLAIR AUROC 0.70 → 0.94)."""
    return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3), correction=0)], dim=1)


def build_multitask_model(
    variant: str,
    n_classes: int,
    backbone: str = "fcn_resnet50",
    in_channels: int = 1,
    image_size: int = 256,
    pretrained: bool = False,
    hidden_dim: int = 256,
    dropout: float = 0.2,
    decoder: str = "fcn",
) -> MultiTaskNet:
    encoder, head = build_parts(backbone, in_channels, image_size, pretrained)
    model = MultiTaskNet(
        encoder, head, variant, n_classes, image_size, hidden_dim, dropout, decoder=decoder
    )
    model.backbone_name = backbone  # recorded in checkpoints; C checks its stage-1 network
    return model


def freeze_for_stage_two(model: MultiTaskNet) -> None:
    """Variant C, stage 2: encoder and segmentation head keep stage 1's weights (and BatchNorm
    statistics: call :func:`keep_frozen_in_eval` at every epoch start)."""
    model.encoder.requires_grad_(False)
    for module in model.segmentation_modules():
        module.requires_grad_(False)


def keep_frozen_in_eval(model: MultiTaskNet) -> None:
    model.encoder.eval()
    for module in model.segmentation_modules():
        module.eval()
