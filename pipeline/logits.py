"""Probabilities ↔ logits, in float64, for every table of confidences (scores, corrections, rules)."""

from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def logit(p: np.ndarray, eps: float) -> np.ndarray:
    """S⁻¹(p) with p clipped into [eps, 1 − eps] so that the logits stay finite."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def calibrate_per_class(z: np.ndarray, margin: float, rows: np.ndarray | None = None) -> np.ndarray:
    """z − median of each column over `rows` (bool [N]; all rows if None) − margin [N, C]: per class, the median
    entry of those rows lands at −margin. `correct` passes the train rows: no test image shapes a train label."""
    z = np.asarray(z, dtype=np.float32)
    ref = z if rows is None else z[np.asarray(rows, bool)]
    return (z - np.median(ref, axis=0, keepdims=True) - np.float32(margin)).astype(np.float32)
