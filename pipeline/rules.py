"""Training rules for partial labels, shared by the sew adapter (EM) and the small-CNN student.

Each rule is a named option; known labels are never changed by any of them and always supervise
(partial BCE: the loss over known entries plus the pseudo-labelled rest).
- `none`: pseudo labels as given (TailorCLIP's EM moves them in `sew`).
- `plmcl` (PLMCL, docs/references.md#plmcl; Singh & Ahmad §III.A): soft pseudo labels follow the
  network with momentum and velocity damping, once per epoch:
  ŷ(t+1) = clip(ŷ(t) + η(p(t) − ŷ(t)) + (α − β)·v(t)), v(t) = ŷ(t) − ŷ(t−1).
  The paper's update has only the momentum and velocity terms (both on v, so it never moves from
  rest); the pull η(p − ŷ) is its "alignment with network predictions" made explicit.
- `g2netpl` (G2NetPL, docs/references.md#g2netpl; Singh & Ahmad §III.B): the pseudo-label player descends
  Φ(ŷ) = H(ŷ) + η·KL(ŷ ‖ p): entropy pushes labels to 0/1, the KL term keeps them near the network's
  prediction p. dΦ/dŷ = −S⁻¹(ŷ) + η(S⁻¹(ŷ) − S⁻¹(p)); for η > 1 the fixed point is the sharpened
  S⁻¹(ŷ) = η/(η − 1)·S⁻¹(p).
- `large_loss` (LL-R, docs/references.md#large-loss, eq. 5 and the authors' code): in every batch the unknown entries
  with the largest losses are rejected (weight 0): k = ⌈rate · B · C⌉ of them, counted over the whole
  batch as the reference code does, with rate = `delta` % per epoch from 0 (the reference's `delta_rel`
  is in percent and divided by 100), capped at `max_rate`.
- `label_distribution` (MulSupConLD, docs/references.md#mulsupconld): each image's positives get weights from a label
  distribution recovered with an RBF kernel on the cosine distance between the image embedding and the
  class text embeddings, scaled so an image's positive weights average 1; negatives keep weight 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.logits import logit
from pipeline.settings import Settings, setting
from pipeline.storage import scored_embeddings
from pipeline.transfer import unit_rows

RULES = ("none", "plmcl", "g2netpl", "large_loss", "label_distribution")
EPS = 1e-4  # soft labels stay inside (0, 1) so that their logits are finite


@dataclass(frozen=True)
class RuleSettings(Settings):
    """The partial-label training rule: top-level `rule`, with the constants of the rule's own section."""

    name: str = setting("none", choices=RULES)
    plmcl_eta: float = setting(0.5, ge=0.0, le=1.0)  # pull towards the prediction
    plmcl_alpha: float = setting(0.9, ge=0.0, le=1.0)  # momentum
    plmcl_beta: float = setting(0.5, ge=0.0, le=1.0)  # velocity damping
    g2netpl_eta: float = setting(2.0, ge=0.0)  # KL penalty weight (> 1 sharpens, ≤ 1 lets entropy win)
    g2netpl_lr: float = setting(0.05, ge=0.0)
    g2netpl_steps: int = setting(10, ge=0)
    ll_delta: float = setting(0.1, ge=0.0, le=100.0)  # % of the batch's entries rejected more per epoch
    ll_max_rate: float = setting(0.5, ge=0.0, le=1.0)
    ld_sigma: float = setting(0.1, ge=1e-6)  # RBF width on cosine distance

    # read from several sections: field → params key
    PARAMS_KEYS: ClassVar[dict[str, str]] = {
        "name": "rule", "plmcl_eta": "plmcl.eta", "plmcl_alpha": "plmcl.alpha", "plmcl_beta": "plmcl.beta",
        "g2netpl_eta": "g2netpl.eta", "g2netpl_lr": "g2netpl.lr", "g2netpl_steps": "g2netpl.steps",
        "ll_delta": "large_loss.delta", "ll_max_rate": "large_loss.max_rate", "ld_sigma": "label_distribution.sigma"}

    @property
    def updates_labels(self) -> bool:
        return self.name in ("plmcl", "g2netpl")


NO_RULE = RuleSettings()


def plmcl_update(y: np.ndarray, y_prev: np.ndarray, p: np.ndarray, eta: float, alpha: float,
                 beta: float) -> np.ndarray:
    """One PLMCL pseudo-label step on probabilities: pull towards p plus damped momentum."""
    v = y - y_prev
    return np.clip(y + eta * (p - y) + (alpha - beta) * v, EPS, 1 - EPS)


def g2netpl_update(y: np.ndarray, p: np.ndarray, eta: float, lr: float, steps: int) -> np.ndarray:
    """`steps` gradient steps of the pseudo-label player on Φ(ŷ) = H(ŷ) + η·KL(ŷ ‖ p)."""
    zp = logit(p, EPS)
    for _ in range(steps):
        zy = logit(y, EPS)
        grad = -zy + eta * (zy - zp)
        y = np.clip(y - lr * grad, EPS, 1 - EPS)
    return y


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


def label_distribution_weights(emb: np.ndarray, text: np.ndarray, positive: np.ndarray,
                               sigma: float) -> np.ndarray:
    """Weights [N, C]: positives by an RBF label distribution (mean 1 over an image's positives), else 1."""
    dist = 1.0 - unit_rows(emb) @ unit_rows(text).T  # cosine distance, [N, C]
    affinity = np.where(positive, np.exp(-(dist - dist.min(1, keepdims=True)) / sigma), 0.0)
    total = affinity.sum(1, keepdims=True)
    n_pos = positive.sum(1, keepdims=True)
    weights = np.divide(affinity * n_pos, total, out=np.ones_like(affinity), where=total > 0)
    return np.where(positive, weights, 1.0).astype(np.float32)


def rule_weights(rule: RuleSettings, targets_logit: np.ndarray, scores: str | Path,
                 rows: np.ndarray) -> np.ndarray | None:
    """label_distribution weights [len(rows), C] from the embeddings of the score store's `rows`;
    None for every other rule (nothing is read)."""
    if rule.name != "label_distribution":
        return None
    emb, text = scored_embeddings(scores)
    return label_distribution_weights(emb[rows], text, targets_logit > 0, rule.ld_sigma)


def rule_loss(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, rule: RuleSettings,
              epoch: int, weights: torch.Tensor | None = None,
              labelled: torch.Tensor | None = None) -> torch.Tensor:
    """Partial BCE of logits against soft targets (probabilities) under the rule's weighting.

    `labelled` (bool, like logits): entries without a target (a composite's hidden host labels) carry no loss.
    """
    if rule.name not in ("large_loss", "label_distribution") and (labelled is None or bool(labelled.all())):
        return F.binary_cross_entropy_with_logits(logits, targets)  # plain mean, bit for bit the rule-free loss
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    w = torch.ones_like(loss) if labelled is None else labelled.float()
    if rule.name == "large_loss":
        rate = rejection_rate(epoch, rule.ll_delta, rule.ll_max_rate)
        w = w * large_loss_keep(loss, ~known, rate)
    if rule.name == "label_distribution" and weights is not None:
        w = w * weights
    return (loss * w).sum() / w.sum().clamp(min=1.0)


def update_pseudo_labels(y: np.ndarray, y_prev: np.ndarray, predictions: np.ndarray, known: np.ndarray,
                         rule: RuleSettings) -> np.ndarray:
    """The epoch-end label step of `plmcl` / `g2netpl` on probabilities [N, C]; known entries unchanged."""
    if rule.name == "plmcl":
        new = plmcl_update(y, y_prev, predictions, rule.plmcl_eta, rule.plmcl_alpha, rule.plmcl_beta)
    elif rule.name == "g2netpl":
        new = g2netpl_update(y, predictions, rule.g2netpl_eta, rule.g2netpl_lr, rule.g2netpl_steps)
    else:
        return y
    return np.where(known, y, new)
