"""Probabilities ↔ logits, in float64, for every table of confidences (scores, corrections, rules)."""

from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def logit(p: np.ndarray, eps: float) -> np.ndarray:
    """S⁻¹(p) with p clipped into [eps, 1 − eps] so that the logits stay finite."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)
