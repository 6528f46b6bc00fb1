"""Which labels are known: the partial-label setting (ratio r of train label entries observed)."""

from __future__ import annotations

import numpy as np


def observed_mask(n_images: int, n_classes: int, is_train: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """int8 [N, C]: 1 where a label is known. Each train entry is known with probability `ratio`,
    positives and negatives alike; test rows are never known. ratio 0 → nothing known.

    The draw for an entry does not depend on ratio, so the labels known at r=0.1 are a subset of
    those known at r=0.3: ablations over ratio are nested.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    u = np.random.default_rng(np.random.SeedSequence([seed, 2])).random((n_images, n_classes))
    known = (u < ratio) & np.asarray(is_train, dtype=bool)[:, None]
    return known.astype(np.int8)
