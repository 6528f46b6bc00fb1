"""Multi-label metrics (docs/design.md#evaluate). Scores are any monotone confidences (logits or probs)."""

from __future__ import annotations

import numpy as np

from pipeline.logits import sigmoid


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Non-interpolated AP of one class, equal to scikit-learn's `average_precision_score`:
    Σ (R_k − R_{k−1}) P_k over distinct thresholds (items sharing a score enter the ranking together)."""
    if not np.asarray(y_true).astype(bool).any():
        return float("nan")
    precision, recall = precision_recall_curve(y_true, score)
    return float((precision * np.diff(np.r_[0.0, recall])).sum())


def precision_recall_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) at every distinct threshold, from the highest score down."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[last]
    return tp / (last + 1), tp / max(int(y.sum()), 1)


def per_class_ap(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AP per class [C]; NaN for classes with no positive."""
    return np.array([average_precision(y_true[:, c], scores[:, c]) for c in range(y_true.shape[1])])


def mean_ap(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean AP over the classes with at least one positive."""
    ap = per_class_ap(y_true, scores)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(CF1, OF1): per-class (macro) F1 from mean per-class precision and recall, and overall F1."""
    y, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    tp = (y & p).sum(0).astype(float)
    n_pred, n_true = p.sum(0).astype(float), y.sum(0).astype(float)
    cp = np.mean(np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0))
    cr = np.mean(np.divide(tp, n_true, out=np.zeros_like(tp), where=n_true > 0))
    op = tp.sum() / max(n_pred.sum(), 1.0)
    orc = tp.sum() / max(n_true.sum(), 1.0)
    cf1 = 2 * cp * cr / (cp + cr) if cp + cr > 0 else 0.0
    of1 = 2 * op * orc / (op + orc) if op + orc > 0 else 0.0
    return float(cf1), float(of1)


def top_k_predictions(scores: np.ndarray, k: int) -> np.ndarray:
    """Binary predictions marking the k highest-scoring classes of each row."""
    pred = np.zeros(scores.shape, dtype=bool)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.put_along_axis(pred, top, True, axis=1)
    return pred


def hamming_loss(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true).astype(bool) != np.asarray(y_pred).astype(bool)))


def inversions(y_true: np.ndarray, scores: np.ndarray) -> int:
    """Pairs (negative, positive) within a class where the negative scores strictly higher, summed
    over classes. Counted by sorting, O(N log N) per class."""
    total = 0
    for c in range(y_true.shape[1]):
        y = np.asarray(y_true[:, c]).astype(bool)
        s = np.asarray(scores[:, c], dtype=np.float64)
        neg = np.sort(s[~y])
        # For each positive, the negatives scoring strictly above it.
        total += int((len(neg) - np.searchsorted(neg, s[y], side="right")).sum())
    return total


def classification_report(y_true: np.ndarray, scores_logit: np.ndarray, threshold: float = 0.5,
                          top_k: int = 3) -> dict[str, float]:
    """mAP, CF1/OF1 at a probability threshold and at top-k, and Hamming loss at the threshold.

    Rankings (mAP, top-k) use the logits themselves: float64 sigmoids saturate to exactly 1.0 above
    a logit of ~37 and would tie entries that the logits still order.
    """
    pred = sigmoid(scores_logit) >= threshold
    cf1, of1 = f1_scores(y_true, pred)
    cf1_k, of1_k = f1_scores(y_true, top_k_predictions(np.asarray(scores_logit), top_k))
    return {
        "map": mean_ap(y_true, scores_logit),
        "cf1": cf1, "of1": of1,
        f"cf1_top{top_k}": cf1_k, f"of1_top{top_k}": of1_k,
        "hamming": hamming_loss(y_true, pred),
    }

