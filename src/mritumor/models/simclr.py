"""SimCLR: a slice encoder from the backbone registry followed by a projection head.

State-dict keys are ``encoder.*`` (the :class:`~mritumor.models.backbones.Encoder`, exactly the
keys a supervised model's backbone has) and ``projection.*`` (discarded after pretraining).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mritumor.checkpoints import CheckpointError, load_checkpoint
from mritumor.models.backbones import Encoder

log = logging.getLogger(__name__)

ENCODER_PREFIX = "encoder."


class SimCLRModel(nn.Module):
    """``forward(images) -> z``: encoder features (B, feature_dim) → projection (B, projection_dim).

    The projection is SimCLR's MLP, Linear → ReLU → Linear; ``hidden_dim`` defaults to the
    encoder's feature dimension, as in the paper.
    """

    def __init__(self, encoder: Encoder, projection_dim: int = 128, hidden_dim: int | None = None):
        super().__init__()
        if projection_dim < 1:
            raise ValueError("projection_dim must be ≥ 1")
        hidden_dim = hidden_dim or encoder.feature_dim
        self.encoder = encoder
        self.projection = nn.Sequential(
            nn.Linear(encoder.feature_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, projection_dim),
        )
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(images))


def extract_encoder_state(simclr_state: dict) -> dict:
    """The encoder's weights from a SimCLR state dict, ``encoder.`` prefix removed, ready for
    ``Encoder.load_state_dict``. Projection weights are left out: they serve only the
    contrastive task. The one place downstream code turns ``simclr_state`` into encoder weights."""
    state = {
        key[len(ENCODER_PREFIX) :]: value
        for key, value in simclr_state.items()
        if key.startswith(ENCODER_PREFIX)
    }
    if not state:
        raise ValueError("the SimCLR state holds no encoder.* weights")
    return state


def load_ssl_encoder(encoder, ssl_ckpt: str | Path) -> dict:
    """Only ``encoder.*`` of the SimCLR checkpoint; missing and unexpected keys are reported."""
    payload = load_checkpoint(ssl_ckpt)
    if "simclr_state" not in payload:
        raise CheckpointError(
            f"{ssl_ckpt} has no 'simclr_state': not a checkpoint of `mritumor pretrain`"
        )
    config = payload.get("encoder_config", {})
    expected = encoder.config
    if config and (config.get("name"), config.get("in_channels")) != (
        expected.name,
        expected.in_channels,
    ):
        raise CheckpointError(
            f"{ssl_ckpt} holds a {config.get('name')} encoder for {config.get('in_channels')} channel(s); this "
            f"model is a {expected.name} for {expected.in_channels} channel(s) (use --backbone {config.get('name')})"
        )
    state = extract_encoder_state(payload["simclr_state"])
    result = encoder.load_state_dict(state, strict=False)
    report: dict[str, Any] = {
        "loaded": len(state),
        "missing": list(result.missing_keys),
        "unexpected": list(result.unexpected_keys),
    }
    log.info(
        "SSL encoder from %s: %d tensors loaded, %d missing, %d unexpected",
        ssl_ckpt,
        report["loaded"],
        len(report["missing"]),
        len(report["unexpected"]),
    )
    for key in report["missing"][:10]:
        log.warning("  missing from SSL checkpoint: %s", key)
    for key in report["unexpected"][:10]:
        log.warning("  unexpected in SSL checkpoint: %s", key)
    return report
