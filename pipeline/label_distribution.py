"""MulSupConLD's label distributions (summary paper 004; docs/references.md#mulsupconld), a training rule
(method `label_distribution`) of the adapter in `sew` and the small-CNN student in `distill`.

Each image's positives get weights from a label distribution recovered with an RBF kernel on the cosine
distance between the image embedding and the class text embeddings, scaled so an image's positive weights
average 1; negatives keep weight 1. Its paper trains with every label known (`ratio: 1.0`); in the papers'
settings the distribution spreads over the known positives only, never over CLIP's labels (stages/sew.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.method_registry import register_method
from pipeline.rules import Rule
from pipeline.settings import setting
from pipeline.storage import scored_embeddings
from pipeline.transfer import unit_rows


def label_distribution_weights(emb: np.ndarray, text: np.ndarray, positive: np.ndarray,
                               sigma: float) -> np.ndarray:
    """Weights [N, C]: positives by an RBF label distribution (mean 1 over an image's positives), else 1."""
    dist = 1.0 - unit_rows(emb) @ unit_rows(text).T  # cosine distance, [N, C]
    affinity = np.where(positive, np.exp(-(dist - dist.min(1, keepdims=True)) / sigma), 0.0)
    total = affinity.sum(1, keepdims=True)
    n_pos = positive.sum(1, keepdims=True)
    weights = np.divide(affinity * n_pos, total, out=np.ones_like(affinity), where=total > 0)
    return np.where(positive, weights, 1.0).astype(np.float32)


@register_method
@dataclass(frozen=True)
class LabelDistribution(Rule):
    """Method `label_distribution`, constants in section `label_distribution`."""

    sigma: float = setting(0.1, ge=1e-6)  # RBF width on the cosine distance

    NAME: ClassVar[str] = "label_distribution"
    PARAMS_KEYS: ClassVar[dict[str, str]] = {"unknown": "unknown", "sigma": "label_distribution.sigma"}
    ENTRY_LOSS: ClassVar[bool] = True

    def entry_weights(self, targets_logit: np.ndarray, scores: str | Path, rows: np.ndarray) -> np.ndarray:
        """Weights of the positives of `targets_logit` (> 0) from the embeddings of the score store's `rows`."""
        emb, text = scored_embeddings(scores)
        return label_distribution_weights(emb[rows], text, targets_logit > 0, self.sigma)
