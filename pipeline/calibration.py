"""Per-class calibration of label logits by labelled entries: a logistic fit with a prior around σ(z), for the
review's order (`masking.answer_calibration`, on a person's answers) and `correct.calibration: known` (on the
known entries). Kept apart from pipeline.logits, which the scoring stages read: an edit here reruns `mask` and
`correct`, never the scores.
"""

from __future__ import annotations

import numpy as np

from pipeline.logits import sigmoid

# `logistic_fit`: the least slope a, so that a higher logit never means a lower P(present); and the precision
# of the prior that keeps a class's σ(z) until its labelled entries say otherwise
MIN_SLOPE = 0.1
FIT_PRIOR = 0.1


def logistic_fit(x: np.ndarray, t: np.ndarray, prior: float = FIT_PRIOR, min_slope: float = MIN_SLOPE,
                 steps: int = 50) -> tuple[float, float]:
    """(a, b) maximising Σ log-likelihood of the 0/1 labels t under σ(a·x + b) − prior/2 ‖(a, b) − (1, 0)‖², with
    a ≥ min_slope (a higher logit never means a lower P(present)): Platt scaling of one class's logits x on
    its labelled entries, pulled towards σ(x) by the Gaussian prior.

    Newton's steps halve until the objective falls: a full step from (1, 0) overshoots on labels the logits
    separate well (a rare class's positives far above its negatives); undamped it ran off to a ≈ 0.1,
    b ≈ −200 (every entry at P ≈ 0). The objective is convex, so where the free mode has a < min_slope the
    bounded one lies on a = min_slope, and only b is fitted there."""
    x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
    design = np.stack([x, np.ones_like(x)], axis=1)
    centre = np.array([1.0, 0.0])

    def loss(w: np.ndarray) -> float:
        z = design @ w  # −log-likelihood, stably: log(1 + e^z) − t·z
        return float(np.sum(np.logaddexp(0.0, z) - t * z) + 0.5 * prior * np.sum((w - centre) ** 2))

    def fit(w: np.ndarray, free: np.ndarray) -> np.ndarray:
        for _ in range(steps):
            q = sigmoid(np.clip(design @ w, -50.0, 50.0))
            grad = (design.T @ (q - t) + prior * (w - centre))[free]
            hess = ((design * (q * (1 - q))[:, None]).T @ design + prior * np.eye(2))[np.ix_(free, free)]
            step = np.zeros(2)
            step[free] = np.linalg.solve(hess, grad)
            now, scale = loss(w), 1.0
            while scale > 1e-6 and loss(w - scale * step) > now:
                scale /= 2
            w = w - scale * step
            if np.abs(scale * step).max() < 1e-9:
                break
        return w

    w = fit(centre.copy(), np.array([True, True]))
    if w[0] < min_slope:
        w = fit(np.array([min_slope, w[1]]), np.array([False, True]))
    return float(w[0]), float(w[1])


def calibrate_to_known(z: np.ndarray, known: np.ndarray, labels: np.ndarray, min_each: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(z [N, C] with each class's logits mapped to a·z + b, `logistic_fit` on the class's known entries
    (`known` bool [N, C], `labels` their 0/1 values), so that σ of a logit is the share of known entries
    present at it. A class with fewer than `min_each` known positives or known negatives keeps its logits:
    a fit to one kind of label only says how far to push the whole class, which the prior alone decides
    (min_each 0 fits every class with a known entry); bool [C]: the classes fitted). float32 z stays float32,
    float64 stays float64."""
    z = np.asarray(z)
    z = z if z.dtype == np.float64 else z.astype(np.float32)
    known, labels = np.asarray(known, bool), np.asarray(labels, np.float64)
    out, fitted = z.copy(), np.zeros(z.shape[1], bool)
    for c in np.flatnonzero(known.any(0)):
        t = labels[known[:, c], c]
        if min(t.sum(), len(t) - t.sum()) < min_each:
            continue
        a, b = logistic_fit(z[known[:, c], c], t)
        out[:, c] = a * z[:, c].astype(np.float64) + b
        fitted[c] = True
    return out, fitted
