"""Method `cooccurrence`: known labels → unknown entries through label co-occurrence, in the `correct` stage,
before any training (intra-image transfer: HST §3.2 IST with a dataset-level P(i | j), eq. 4; the mechanics
are in pipeline.transfer). An unknown entry scores Σ over the image's other known positives j of P(i | j),
counted over pairs of known labels, and is raised when the score passes one threshold for all classes
(HST's θ_intra) learnt on the known entries (`ema` or `dtl`). It only raises, as HST's IST. With `gate:
held_out` (the default; ours) a class keeps its raises only where they help its held-out known entries
(pipeline.transfer.held_out_gate, as for pipeline.prototypes); `gate: none` keeps every raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipeline.method_registry import register_method
from pipeline.transfer import CorrectTransfer, LabelTransfer, transfer_by_cooccurrence


@register_method
@dataclass(frozen=True)
class CooccurrenceTransfer(CorrectTransfer):
    """Section `cooccurrence` (its threshold keys: `rule`)."""

    SECTION: ClassVar[str] = "cooccurrence"
    NAME: ClassVar[str] = "cooccurrence"

    def apply(self, target: np.ndarray, known: np.ndarray, labels: np.ndarray,
              embeddings: Callable[[], tuple[np.ndarray, np.ndarray]], train: np.ndarray | None) -> LabelTransfer:
        raised, p = transfer_by_cooccurrence(known, labels, self.rule)
        return LabelTransfer(raised, np.zeros_like(raised), {"cooccurrence": p})
