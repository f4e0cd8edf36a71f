"""Out-of-distribution scores: how unlike the training data an input's features are.

``mahalanobis`` (Lee et al. 2018): class means of the training units' embeddings and one shared
covariance (Ledoit–Wolf shrinkage from scikit-learn, stable when the embedding has more
dimensions than there are training units); an input's score is its squared Mahalanobis
distance to the nearest class mean. ``energy`` (Liu et al. 2020): −logsumexp of the logits.
Higher means more unusual for both. The threshold is the score below which a chosen share of
the *validation* patients falls (95 % by default), so about 5 % of in-distribution patients are
flagged by construction and an input above it is reported as out of distribution.

The fitted state is plain arrays (:meth:`OODDetector.to_state`), stored in ``best.pt`` and
loaded with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

SCORES = ("mahalanobis", "energy")


def energy_score(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=float)
    top = logits.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))


@dataclass
class OODDetector:
    method: str
    means: np.ndarray | None = None  # (K, D) class means (mahalanobis)
    precision: np.ndarray | None = None  # (D, D) shared inverse covariance (mahalanobis)
    threshold: float = float("inf")
    keep: float = 0.95

    @classmethod
    def fit(cls, features: np.ndarray, labels: ArrayLike, method: str = "mahalanobis"):
        """Fit on the training units' embeddings (mahalanobis) — energy needs no fit."""
        if method not in SCORES:
            raise ValueError(f"unknown OOD score {method!r}; choose one of {SCORES}")
        if method == "energy":
            return cls(method)
        from sklearn.covariance import LedoitWolf

        features = np.asarray(features, dtype=np.float64)
        truth = np.asarray(labels, dtype=int)
        known = truth >= 0
        features, truth = features[known], truth[known]
        classes = np.unique(truth)
        means = np.zeros((int(truth.max()) + 1, features.shape[1]))
        for k in classes:
            means[k] = features[truth == k].mean(axis=0)
        centred = features - means[truth]
        precision = LedoitWolf(assume_centered=True).fit(centred).precision_
        present = np.zeros(len(means), bool)
        present[classes] = True
        return cls(method, means[present], precision)

    def score(self, features: np.ndarray | None = None, logits: np.ndarray | None = None):
        """(N,) scores; mahalanobis needs ``features``, energy ``logits``."""
        if self.method == "energy":
            if logits is None:
                raise ValueError("the energy score needs logits")
            return energy_score(logits)
        if features is None or self.means is None or self.precision is None:
            raise ValueError("the Mahalanobis score needs features and a fitted detector")
        features = np.asarray(features, dtype=np.float64)
        difference = features[:, None, :] - self.means[None, :, :]  # (N, K, D)
        distances = np.einsum("nkd,de,nke->nk", difference, self.precision, difference)
        return distances.min(axis=1)

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

        state = {"method": self.method, "threshold": self.threshold, "keep": self.keep}
        if self.means is not None:
            state["means"] = torch.as_tensor(self.means, dtype=torch.float64)
            state["precision"] = torch.as_tensor(self.precision, dtype=torch.float64)
        return state

    @classmethod
    def from_state(cls, state: dict) -> OODDetector:
        def array(key):
            value = state.get(key)
            return None if value is None else np.asarray(value, dtype=np.float64)

        return cls(
            state["method"],
            array("means"),
            array("precision"),
            float(state["threshold"]),
            float(state.get("keep", 0.95)),
        )


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUROC of telling out-of-distribution (positive, higher score) from in-distribution."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))
