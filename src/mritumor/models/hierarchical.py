"""The seed's two-step classifier: a patient's bag of slices → tumour type → grade given type.

Tensor flow::

    images (B, N, C, S, S), mask (B, N)
      └─ backbone on real slices ─► features (B, N, D)
           └─ MIL pooling ─► patient feature (B, D), slice weights (B, N)
                ├─ type head ─► type logits (B, T)            P(t | X)
                └─ grade heads (one per type) ─► (B, T, G)    P(g | X, t)
                     grades never seen with a type in training: logit −inf → P = 0
    end-to-end grade  P(g | X) = Σ_t P(t | X) · P(g | X, t)   (B, G)
"""

from __future__ import annotations

import torch
from torch import nn

from mritumor.models.backbones import Encoder
from mritumor.models.pooling import build_pooling


class TwoStepClassifier(nn.Module):
    allowed_grades: torch.Tensor  # a buffer: declared so that type checkers see a Tensor

    def __init__(
        self,
        backbone: Encoder,
        allowed_grades: torch.Tensor,
        pooling: str = "attention",
        dropout: float = 0.25,
    ):
        super().__init__()
        n_types, n_grades = allowed_grades.shape
        self.backbone = backbone
        self.pooling = build_pooling(pooling, backbone.feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.type_head = nn.Linear(backbone.feature_dim, n_types)
        # per-type grade heads, stored as one linear layer for speed: output reshaped (T, G)
        self.grade_heads = nn.Linear(backbone.feature_dim, n_types * max(n_grades, 1))
        self.register_buffer("allowed_grades", allowed_grades.bool())
        self.n_types, self.n_grades = n_types, n_grades
        self.channels_last = False  # set with to_channels_last(): faster convolutions on CPU

    def to_channels_last(self) -> TwoStepClassifier:
        self.backbone.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def slice_features(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Backbone features of the real slices only; padded positions stay zero."""
        batch, slots = mask.shape
        selected = images[mask]
        if self.channels_last:
            selected = selected.contiguous(memory_format=torch.channels_last)
        real = self.backbone(selected)
        features = real.new_zeros(batch, slots, real.shape[-1])
        features[mask] = real
        return features

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict:
        patient, weights = self.pooling(self.slice_features(images, mask), mask)
        patient = self.dropout(patient)
        type_logits = self.type_head(patient)
        grade_logits = self.grade_heads(patient).view(-1, self.n_types, max(self.n_grades, 1))
        grade_logits = grade_logits[..., : self.n_grades]
        grade_logits = grade_logits.masked_fill(~self.allowed_grades, float("-inf"))
        return {
            "type_logits": type_logits,
            "grade_logits": grade_logits,
            "slice_weights": weights,
            "patient_embedding": patient,  # what out-of-distribution scores are fitted on
        }


def hierarchical_probabilities(
    type_logits: torch.Tensor, grade_logits: torch.Tensor, temperature: float = 1.0
) -> dict:
    """P(t), P(g|t) and the end-to-end P(g) = Σ_t P(t) P(g|t).

    A type with no allowed grade (e.g. a type whose training patients had no grade) has
    P(g|t) = 0 for every g, so P(g) then sums to 1 − P(that type); ``grade_e2e_normalised``
    rescales to a distribution over grades for grade metrics."""
    type_probs = torch.softmax(type_logits.float() / temperature, dim=-1)
    finite = torch.isfinite(grade_logits)
    safe = torch.where(finite, grade_logits.float(), torch.full_like(grade_logits.float(), -1e30))
    grade_given_type = torch.softmax(safe, dim=-1) * finite  # rows with no allowed grade → 0
    grade_e2e = torch.einsum("bt,btg->bg", type_probs, grade_given_type)
    total = grade_e2e.sum(dim=-1, keepdim=True)
    return {
        "type": type_probs,
        "grade_given_type": grade_given_type,
        "grade_e2e": grade_e2e,
        "grade_e2e_normalised": grade_e2e / total.clamp_min(1e-12),
    }


def hierarchical_loss(
    outputs: dict,
    tumor_type: torch.Tensor,
    grade: torch.Tensor,
    type_weights: torch.Tensor | None = None,
    grade_weight: float = 1.0,
) -> dict:
    """Type cross-entropy + grade cross-entropy under the TRUE type, for patients whose grade
    is known (grade ≥ 0); unknown grades contribute nothing."""
    type_loss = nn.functional.cross_entropy(
        outputs["type_logits"].float(), tumor_type, weight=type_weights
    )
    known = grade >= 0
    if known.any():
        under_true_type = outputs["grade_logits"][known, tumor_type[known]].float()
        grade_loss = nn.functional.cross_entropy(under_true_type, grade[known])
    else:
        grade_loss = outputs["type_logits"].sum() * 0.0
    return {
        "loss": type_loss + grade_weight * grade_loss,
        "type_loss": type_loss,
        "grade_loss": grade_loss,
    }
