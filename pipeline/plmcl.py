"""PLMCL (partial-label momentum curriculum learning; docs/references.md#plmcl), a training rule (method
`plmcl`) of the adapter in `sew` and the small-CNN student in `distill`. The original paper is not available
offline; the summary paper 000 §III.A is our specification.

Soft pseudo labels of the unknown entries follow the network with momentum and velocity damping, once per
epoch: ŷ(t+1) = clip(ŷ(t) + η(p(t) − ŷ(t)) + (α − β)·v(t)), v(t) = ŷ(t) − ŷ(t−1). The summary's update has only
the momentum and velocity terms (both on v, so it never moves from rest); the pull η(p − ŷ) is its "alignment
with network predictions" made explicit. In the papers' settings (`unknown: ignore | negative`) ŷ(0) = p = σ(f(x)),
the network's outputs after its first epoch (§III.A), and the network trains on ŷ. With `unknown: pseudo` (ours,
a setting the summary does not test) ŷ(0) is the corrected CLIP label and ŷ is the prediction of TailorCLIP's
E-step (pipeline.em.rule_prediction_step): trained on every epoch, it cost the student 0.08 there.
The known labels of PLMCL's own setting (§III.A: "a fraction of images carries a single observed positive and
the remainder are entirely unlabeled") are top-level `known: single_positive` (pipeline.masking); there it
runs on `unknown: negative`, so the first epoch is AN's (Cole et al. 2021) and ŷ(0) its outputs: on `ignore`
that epoch would see positives alone and start every ŷ near 1.
The loss L_sne(p, y ⊙ ŷ) + λ·L_ae(ŷ) is the BCE over the known entries plus λ (`weight`) times the BCE of the
pseudo-labelled ones. The confidence-aware curriculum τ(t) (`curriculum`, papers' settings only) is garbled in
the summary ("a per-class threshold based on the expected prediction margin"); ours is
pipeline.rules.curriculum_mask: an entry trains once its margin |2ŷ − 1| reaches (1 − t)·its class's mean margin.
The summary gives no value for λ. At λ 1 on partial BCE (`unknown: ignore`) the unknown entries, nine to each
known one at 10 %, train on labels the network made after one epoch on the known ones, and PLMCL fell below
partial BCE (contexts world 0, AVX2 fp32: −0.069). Table 1's `plmcl_paper` row runs λ 0.1, so that an image's
pseudo-labelled entries weigh about as much as its known ones, chosen on the tuning world (contexts world 2,
bf16: partial BCE 0.564, λ 0.3 0.599, λ 0.1 0.624): above partial BCE on every draw of worlds 0 and 1 (README).
The default stays 1, which the rows on AN run (on AN, where the unknown entries' targets replace AN's negatives,
λ 2 beat 0.5 on the tuning world); with `unknown: pseudo` λ does not act (pipeline.em.composite_targets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipeline.method_registry import register_method
from pipeline.rules import EPS, Rule
from pipeline.settings import setting


def plmcl_update(y: np.ndarray, y_prev: np.ndarray, p: np.ndarray, eta: float, alpha: float,
                 beta: float) -> np.ndarray:
    """One PLMCL pseudo-label step on probabilities: pull towards p plus damped momentum."""
    v = y - y_prev
    return np.clip(y + eta * (p - y) + (alpha - beta) * v, EPS, 1 - EPS)


@register_method
@dataclass(frozen=True)
class Plmcl(Rule):
    """Method `plmcl`, constants in section `plmcl`."""

    eta: float = setting(0.5, ge=0.0, le=1.0)  # η: pull towards the prediction
    alpha: float = setting(0.9, ge=0.0, le=1.0)  # α: momentum
    beta: float = setting(0.5, ge=0.0, le=1.0)  # β: velocity damping
    weight: float = setting(1.0, ge=0.0)  # λ: weight of the pseudo-labelled entries' BCE
    curriculum: bool = setting(True)  # τ(t): confident pseudo labels first (ignore / negative only)

    NAME: ClassVar[str] = "plmcl"
    PARAMS_KEYS: ClassVar[dict[str, str]] = {
        "unknown": "unknown", **{k: f"plmcl.{k}" for k in ("eta", "alpha", "beta", "weight", "curriculum")}}
    UPDATES_LABELS: ClassVar[bool] = True

    @property
    def uses_curriculum(self) -> bool:
        return self.curriculum and self.paper_setting  # with CLIP's labels as ŷ(0) every entry trains at once

    @property
    def pseudo_weight(self) -> float:
        return self.weight

    def update(self, y: np.ndarray, y_prev: np.ndarray, p: np.ndarray) -> np.ndarray:
        return plmcl_update(y, y_prev, p, self.eta, self.alpha, self.beta)
