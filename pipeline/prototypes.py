"""Method `prototypes`: known labels → unknown entries through class prototypes, in the `correct` stage, before
any training (cross-image transfer: HST §3.3 CST, TRM-ML §3.4 multimodal prototypes; the mechanics and the
threshold rules `ema` (TRM-ML eq. 9–11) and `dtl` (HST eq. 12–16) are in pipeline.transfer). Visual
prototypes are K-means centres of the known positives' image embeddings, topped up to `bank` members by the
train images the pseudo labels rank highest; an entry is raised (lowered, `ema` only) when both its visual
and its text similarity pass the class's thresholds learnt on the known entries (TRM-ML eq. 12).

Ours, not the papers': with `gate: held_out` (the default) a class keeps its moves only if they help where we
can tell, on its known entries decided with them hidden (pipeline.transfer.held_out_gate). The papers start from
no label; over CLIP's pseudo labels (`unknown: pseudo`) most classes' moves replace better labels than they
bring. `gate: none` keeps every move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipeline.method_registry import register_method
from pipeline.settings import setting
from pipeline.transfer import CorrectTransfer, LabelTransfer, transfer_by_prototypes


@register_method
@dataclass(frozen=True)
class PrototypeTransfer(CorrectTransfer):
    """Section `prototypes` (its threshold keys: `rule`)."""

    k: int = setting(10, ge=1)
    bank: int = setting(50, ge=1)

    SECTION: ClassVar[str] = "prototypes"
    NAME: ClassVar[str] = "prototypes"

    def apply(self, target: np.ndarray, known: np.ndarray, labels: np.ndarray,
              embeddings: Callable[[], tuple[np.ndarray, np.ndarray]], train: np.ndarray | None) -> LabelTransfer:
        """The bank's top-up ranks the `train` rows by `target`."""
        emb, text = embeddings()
        raised, lowered, bank, sims = transfer_by_prototypes(emb, text, target, known, labels, self.rule, self.k,
                                                             self.bank, train)
        return LabelTransfer(raised, lowered, {"visual": bank.visual, "counts": bank.counts, "text": bank.text,
                                               **sims})
