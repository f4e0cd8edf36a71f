"""Out-of-distribution scores: how unlike the training data an input's features are.

``mahalanobis`` (Lee et al. 2018): class means of the training units' features and one shared
covariance (Ledoit–Wolf shrinkage from scikit-learn, stable when the features have more
dimensions than there are training units); an input's distance is its squared Mahalanobis
distance to the nearest class mean. Features in several ``blocks`` (a multi-task network's
feature statistics, one block per encoder resolution) get one detector per block and, as in
Lee et al.'s feature ensemble, the score is the sum of the blocks' distances, each
standardised by its mean and sd on the validation units (:meth:`OODDetector.standardise`), so
that no block dominates by its dimension. ``energy`` (Liu et al. 2020): −logsumexp of the
logits. Higher means more unusual for all. The threshold is the score below which a chosen
share of the *validation* patients falls (95 % by default), so about 5 % of in-distribution
patients are flagged by construction and an input above it is reported as out of distribution.

The fitted state is plain arrays (:meth:`OODDetector.to_state`), stored in ``best.pt`` and
loaded with ``weights_only=True``; ``features`` names the network output it was fitted on
(states written before blocks existed: one block, ``class_embedding``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

SCORES = ("mahalanobis", "energy")


def energy_score(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=float)
    top = logits.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))


def _mahalanobis(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """min over k of (x − m_k)ᵀ P (x − m_k), expanded as xᵀPx − 2 xᵀP m_k + m_kᵀP m_k so that
    the one (N, D) @ (D, D) product runs in BLAS: a ResNet-50 block has D = 4096, where a
    three-operand einsum over (N, K, D, D) took seconds per patient."""
    projected = features @ precision  # (N, D)
    distances = (
        np.einsum("nd,nd->n", projected, features)[:, None]
        - 2 * projected @ means.T
        + np.einsum("kd,kd->k", means @ precision, means)[None, :]
    )  # (N, K)
    return np.maximum(distances, 0.0).min(axis=1)  # ≥ 0 as in exact arithmetic


@dataclass
class OODDetector:
    method: str
    means: list[np.ndarray] = field(default_factory=list)  # per block: (K, D_b) class means
    precision: list[np.ndarray] = field(default_factory=list)  # per block: (D_b, D_b)
    threshold: float = float("inf")
    keep: float = 0.95
    features: str = "class_embedding"  # the network output the detector scores
    loc: np.ndarray | None = None  # per block: validation mean of the distances
    scale: np.ndarray | None = None  # per block: validation sd of the distances
    # the blocks whose standardised distances are summed (None: all). Shallow resolutions see
    # intensity and texture, which differ by scanner; a detector meant to pass other sites'
    # scans of the same sequence may leave them out (chosen on validation and development data)
    used: list[int] | None = None

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: ArrayLike,
        method: str = "mahalanobis",
        blocks: list[int] | None = None,
        feature_name: str = "class_embedding",
    ):
        """Fit on the training units' features (mahalanobis) — energy needs no fit.
        ``blocks``: widths of consecutive column blocks scored separately (None: one)."""
        if method not in SCORES:
            raise ValueError(f"unknown OOD score {method!r}; choose one of {SCORES}")
        if method == "energy":
            return cls(method, features=feature_name)
        from sklearn.covariance import LedoitWolf

        features = np.asarray(features, dtype=np.float64)
        widths = list(blocks) if blocks else [features.shape[1]]
        if sum(widths) != features.shape[1]:
            raise ValueError(f"blocks {widths} do not add up to {features.shape[1]} features")
        truth = np.asarray(labels, dtype=int)
        known = truth >= 0
        features, truth = features[known], truth[known]
        classes = np.unique(truth)
        detector = cls(method, features=feature_name)
        for block in np.split(features, np.cumsum(widths)[:-1], axis=1):
            means = np.stack([block[truth == k].mean(axis=0) for k in classes])
            centred = block - means[np.searchsorted(classes, truth)]
            detector.means.append(means)
            precision = LedoitWolf(assume_centered=True).fit(centred).precision_
            # rounded to the float32 it is stored in (to_state), so that the detector scores
            # the same before and after a checkpoint round trip
            detector.precision.append(precision.astype(np.float32).astype(np.float64))
        return detector

    def _distances(self, features: np.ndarray) -> np.ndarray:
        """(N, n_blocks) squared Mahalanobis distances to the nearest class mean."""
        widths = [len(p) for p in self.precision]
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != sum(widths):
            raise ValueError(
                f"the OOD detector scores {sum(widths)} values of '{self.features}' per unit, "
                f"got features of shape {features.shape}: the checkpoint's network and its "
                "uncertainty state do not match (re-fit with mritumor fit-uncertainty)"
            )
        blocks = np.split(features, np.cumsum(widths)[:-1], axis=1)
        return np.stack(
            [_mahalanobis(b, m, p) for b, m, p in zip(blocks, self.means, self.precision, strict=True)],
            axis=1,
        )  # fmt: skip

    def standardise(self, features: np.ndarray) -> None:
        """Per-block mean and sd of these (validation) units' distances: several blocks then
        add up on one scale. One block keeps the raw distance."""
        if self.method != "mahalanobis" or len(self.precision) < 2:
            return
        distances = self._distances(features)
        self.loc = distances.mean(axis=0)
        # a floor relative to the distances' size: a near-constant block (dead channels)
        # would otherwise turn rounding differences (ONNX, folded BatchNorm) into huge scores
        self.scale = np.maximum(distances.std(axis=0), 1e-6 * np.abs(self.loc) + 1e-12)

    def score(self, features: np.ndarray | None = None, logits: np.ndarray | None = None):
        """(N,) scores; mahalanobis needs ``features``, energy ``logits``."""
        if self.method == "energy":
            if logits is None:
                raise ValueError("the energy score needs logits")
            return energy_score(logits)
        if features is None or not self.precision:
            raise ValueError("the Mahalanobis score needs features and a fitted detector")
        distances = self._distances(features)
        if self.loc is not None:
            distances = (distances - self.loc) / self.scale
        if self.used is not None:
            distances = distances[:, self.used]
        return distances.sum(axis=1)

    def use_blocks(self, blocks: list[int] | None) -> None:
        """Sum only these blocks (0-based, shallow to deep; None: all); set before
        :meth:`calibrate`, whose threshold is on the sum."""
        if blocks is not None:
            blocks = sorted({int(b) for b in blocks})
            if not blocks or blocks[0] < 0 or blocks[-1] >= len(self.precision):
                raise ValueError(f"OOD blocks {blocks}: choose among 0..{len(self.precision) - 1}")
        self.used = blocks

    def calibrate(self, scores: np.ndarray, keep: float = 0.95) -> float:
        """The threshold that keeps the share ``keep`` of these (validation) scores in
        distribution: the smallest score with at least that share at or below it."""
        scores = np.asarray(scores, dtype=float)
        scores = scores[np.isfinite(scores)]
        self.keep = keep
        self.threshold = (
            float(np.quantile(scores, keep, method="inverted_cdf")) if len(scores) else np.inf
        )
        return self.threshold

    def to_state(self) -> dict:
        import torch

        state = {
            "method": self.method,
            "threshold": self.threshold,
            "keep": self.keep,
            "features": self.features,
        }

        def tensor(array, dtype=torch.float64):
            return torch.as_tensor(array, dtype=dtype)

        if self.precision:
            state["means"] = [tensor(m) for m in self.means]
            # float32: a ResNet-50 block's 4096² matrix is 67 MB, against 134 MB in float64
            state["precision"] = [tensor(p, torch.float32) for p in self.precision]
        if self.loc is not None:
            state["loc"], state["scale"] = tensor(self.loc), tensor(self.scale)
        if self.used is not None:
            state["used_blocks"] = list(self.used)
        return state

    @classmethod
    def from_state(cls, state: dict) -> OODDetector:
        def arrays(key) -> list[np.ndarray]:
            value = state.get(key)
            if value is None:
                return []
            values = value if isinstance(value, list | tuple) else [value]  # before blocks: one
            return [np.asarray(v, dtype=np.float64) for v in values]

        loc = state.get("loc")
        return cls(
            state["method"],
            arrays("means"),
            arrays("precision"),
            float(state["threshold"]),
            float(state.get("keep", 0.95)),
            state.get("features", "class_embedding"),
            None if loc is None else np.asarray(loc, dtype=np.float64),
            None if loc is None else np.asarray(state["scale"], dtype=np.float64),
            None if state.get("used_blocks") is None else [int(b) for b in state["used_blocks"]],
        )


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUROC of telling out-of-distribution (positive, higher score) from in-distribution."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))
