"""LL-R and LL-Ct (large loss rejection and temporary correction, Kim et al. CVPR 2022, §3.3 eq. 5 and the
authors' code, `losses.compute_batch_loss`; docs/references.md#large-loss), a training rule (method
`large_loss`) of the adapter in `sew` and the small-CNN student in `distill`.

In every batch the unknown entries with the largest losses are picked: k = ⌈rate · B · C⌉ of them, counted over
the whole batch as the reference code does, with rate = `delta` % per epoch from 0 (the reference's `delta_rel`
is in percent and divided by 100), capped at `max_rate`. `scheme` says what becomes of them, as the reference's
`mod_scheme`: `LL-R` rejects them (weight 0); `LL-Ct` trains them for this batch only on the flipped label
(1 − target: under assume negative, positive), the reference's `corrected_loss_matrix`. The paper's third
scheme, LL-Cp (the flipped label kept for later epochs), is not built. Its paper's setting is `unknown:
negative` (assume negative), where the picked entries are the likeliest false negatives; Table 1's rows of it
(`benchmarks/partial_labels.py`, `benchmarks/table1.py`) run LL-R. LL-Ct was tried in LL's own setting on the
tuning world (contexts world 2, single positive labels, draw seeds 0–2; README, "LL-R in its own setting"):
below LL-R at δ 0.5 on every draw, so no row runs it; on AN at a random 10 % it is level with AN at δ 0.1 and
collapses at δ 0.5.

With `unknown: pseudo` the rejected entries are the likeliest wrong CLIP pseudo labels (on the contexts
benchmark a quarter of them are wrong, most of them objects named for their usual context). There the default
`delta` 0.5 (7.5 % of a batch's entries rejected by the 16th epoch) was chosen on contexts world 2, draw seeds
0–2, among 0.1, 0.5, 2 and 5 (README, "Partial labels"); it is reported on worlds 0 and 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from pipeline.method_registry import register_method
from pipeline.rules import Rule
from pipeline.settings import setting

SCHEMES = ("LL-R", "LL-Ct")  # the reference code's mod_scheme: reject, or correct for the batch


def rejection_rate(epoch: int, delta_percent: float, max_rate: float) -> float:
    """LL-R schedule: nothing rejected in the first epoch, then `delta_percent` % more per epoch."""
    return float(min(max_rate, delta_percent / 100.0 * epoch))


def large_loss_keep(loss: torch.Tensor, unknown: torch.Tensor, rate: float) -> torch.Tensor:
    """bool mask: False for the ⌈rate × B·C⌉ unknown entries with the largest loss (at most all unknown)."""
    keep = torch.ones_like(loss, dtype=torch.bool)
    n_unknown = int(unknown.sum())
    k = min(n_unknown, math.ceil(rate * loss.numel() - 1e-9))
    if k <= 0:
        return keep
    masked = torch.where(unknown, loss.detach(), torch.full_like(loss, -float("inf")))
    worst = torch.topk(masked.flatten(), k).indices
    keep.view(-1)[worst] = False
    return keep


@register_method
@dataclass(frozen=True)
class LargeLoss(Rule):
    """Method `large_loss`, constants in section `large_loss`."""

    delta: float = setting(0.5, ge=0.0, le=100.0)  # % of the batch's entries rejected more per epoch
    max_rate: float = setting(0.5, ge=0.0, le=1.0)
    scheme: str = setting("LL-R", choices=SCHEMES)  # LL-R rejects the picked entries, LL-Ct flips their label

    NAME: ClassVar[str] = "large_loss"
    PARAMS_KEYS: ClassVar[dict[str, str]] = {"unknown": "unknown", "delta": "large_loss.delta",
                                             "max_rate": "large_loss.max_rate",
                                             "scheme": "large_loss.scheme"}
    ENTRY_LOSS: ClassVar[bool] = True

    def keep(self, loss: torch.Tensor, unknown: torch.Tensor, epoch: int) -> torch.Tensor:
        return large_loss_keep(loss, unknown, rejection_rate(epoch, self.delta, self.max_rate))

    @property
    def corrects(self) -> bool:
        return self.scheme == "LL-Ct"
