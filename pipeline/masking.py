"""Which labels are known: the partial-label setting (ratio r of train label entries observed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.settings import Settings, setting


@dataclass(frozen=True)
class MaskSettings(Settings):
    """The top-level keys of the known-label draw."""

    ratio: float = setting(0.0, ge=0.0, le=1.0)  # fraction of train label entries known
    seed: int = setting(0)


def observed_mask(n_images: int, n_classes: int, is_train: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """int8 [N, C]: 1 where a label is known. Each train entry is known with probability `ratio`,
    positives and negatives alike; test rows are never known. ratio 0 → nothing known.

    The draw for an entry does not depend on ratio, so the labels known at r=0.1 are a subset of
    those known at r=0.3: ablations over ratio are nested.
    """
    MaskSettings(ratio, seed)  # the one definition of the valid range
    u = np.random.default_rng(np.random.SeedSequence([seed, 2])).random((n_images, n_classes))
    known = (u < ratio) & np.asarray(is_train, dtype=bool)[:, None]
    return known.astype(np.int8)
