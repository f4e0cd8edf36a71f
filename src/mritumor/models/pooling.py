"""Multi-instance pooling: a bag of slice features (B, N, D) with a padding mask (B, N) → (B, D).

Every pooling also returns per-slice weights (B, N) summing to 1 over real slices, kept for
explanation ("which slices mattered"). Padded slices never contribute.
"""

from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("mean", "max", "attention")


class MeanPooling(nn.Module):
    def forward(self, features: torch.Tensor, mask: torch.Tensor):
        weights = mask.float() / mask.float().sum(dim=1, keepdim=True).clamp_min(1)
        return torch.einsum("bn,bnd->bd", weights, features), weights


class MaxPooling(nn.Module):
    """Element-wise max over real slices; a slice's weight is the share of feature dimensions
    it supplies the maximum for."""

    def forward(self, features: torch.Tensor, mask: torch.Tensor):
        filled = features.masked_fill(~mask[..., None], float("-inf"))
        pooled, winner = filled.max(dim=1)
        wins = nn.functional.one_hot(winner, features.shape[1]).float().mean(dim=1)  # (B, N)
        return pooled, wins


class GatedAttentionPooling(nn.Module):
    """Gated attention MIL pooling (Ilse, Tomczak & Welling, ICML 2018):
    a_n = softmax_n( w^T (tanh(V h_n) ⊙ sigmoid(U h_n)) ), pooled = Σ_n a_n h_n."""

    def __init__(self, feature_dim: int, hidden_dim: int = 128):
        super().__init__()
        self.value = nn.Linear(feature_dim, hidden_dim)
        self.gate = nn.Linear(feature_dim, hidden_dim)
        self.score = nn.Linear(hidden_dim, 1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor):
        scores = self.score(
            torch.tanh(self.value(features)) * torch.sigmoid(self.gate(features))
        ).squeeze(-1)
        weights = torch.softmax(scores.float().masked_fill(~mask, float("-inf")), dim=1).to(
            features.dtype
        )
        return torch.einsum("bn,bnd->bd", weights, features), weights


def build_pooling(name: str, feature_dim: int) -> nn.Module:
    if name == "mean":
        return MeanPooling()
    if name == "max":
        return MaxPooling()
    if name == "attention":
        return GatedAttentionPooling(feature_dim)
    raise ValueError(f"pooling must be one of {POOLINGS}, not {name!r}")
