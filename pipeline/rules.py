"""Training rules for partial labels, shared by the sew adapter (EM) and the small-CNN student.

What an unknown train entry is, top-level `unknown` (`RuleSettings.unknown`):
- `pseudo` (ours): the corrected CLIP pseudo label; the rules below start from it (ŷ(0) = the corrected label).
- `ignore` and `negative`: the partial-label papers' own settings, in which no CLIP label exists. The adapter
  trains on the plain images (no composites, no EM: both read CLIP's labels) and an unknown entry carries no
  loss (partial BCE, Durand et al. 2019: each image's BCE over its known entries, normalised by their number,
  i.e. g(p_y) = 1/p_y) or is absent (assume negative, AN, Cole et al. 2021), until a rule gives it a label.
  The refined labels of the unknown entries are then the trained network's outputs (or the rule's ŷ).

Each rule is a named option; known labels are never changed by any of them and always supervise.
- `none`: pseudo labels as given (TailorCLIP's EM moves them in `sew`).
- `plmcl` (PLMCL, docs/references.md#plmcl; the summary paper 000 §III.A is our specification): soft pseudo
  labels follow the network with momentum and velocity damping, once per epoch:
  ŷ(t+1) = clip(ŷ(t) + η(p(t) − ŷ(t)) + (α − β)·v(t)), v(t) = ŷ(t) − ŷ(t−1).
  The paper's update has only the momentum and velocity terms (both on v, so it never moves from
  rest); the pull η(p − ŷ) is its "alignment with network predictions" made explicit. In the papers'
  settings ŷ(0) = p = σ(f(x)), the network's outputs after its first epoch (§III.A). The loss
  L_sne(p, y ⊙ ŷ) + λ·L_ae(ŷ) is the BCE over the known entries plus λ (`plmcl.weight`) times the BCE of the
  pseudo-labelled ones. The confidence-aware curriculum τ(t) (`plmcl.curriculum`, papers' settings only) is
  garbled in the summary ("a per-class threshold based on the expected prediction margin"); ours is
  `curriculum_mask`: an entry trains once its margin |2ŷ − 1| reaches (1 − t)·the class's mean margin.
- `g2netpl` (G2NetPL, docs/references.md#g2netpl; 000 §III.B): the pseudo-label player descends
  Φ(ŷ) = H(ŷ) + η·KL(ŷ ‖ p) + η₁·|ŷ − p| after each epoch. The summary's Ψ writes Σ ŷ log ŷ + (1 − ŷ) log(1 − ŷ),
  i.e. −H, whose descent would blur the labels while its text says the player "steers pseudo-labels toward
  binary decisions"; we descend +H, keep the minimax objective's KL term (η = `g2netpl.eta`) and add Ψ's L1
  term (η₁ = `g2netpl.l1`). dΦ/dŷ = −S⁻¹(ŷ) + η(S⁻¹(ŷ) − S⁻¹(p)) + η₁·sign(ŷ − p). ŷ(0) and the
  confidence scheduler (`g2netpl.curriculum`) are PLMCL's.
- `large_loss` (LL-R, docs/references.md#large-loss, eq. 5 and the authors' code): in every batch the unknown entries
  with the largest losses are rejected (weight 0): k = ⌈rate · B · C⌉ of them, counted over the whole
  batch as the reference code does, with rate = `delta` % per epoch from 0 (the reference's `delta_rel`
  is in percent and divided by 100), capped at `max_rate`. Its paper's setting is `unknown: negative`.
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
# What an unknown train entry is to the M-step (top-level `unknown`): `pseudo` the corrected CLIP label (ours);
# the partial-label papers' own settings, with no CLIP label anywhere: `ignore` (no loss: partial BCE,
# Durand et al. 2019, each image's loss normalised by its known entries) and `negative` (assume negative, AN:
# Cole et al. 2021).
UNKNOWN = ("pseudo", "ignore", "negative")
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
    unknown: str = setting("pseudo", choices=UNKNOWN)
    plmcl_weight: float = setting(1.0, ge=0.0)  # λ: weight of the pseudo-labelled entries' BCE
    plmcl_curriculum: bool = setting(True)  # τ(t): confident pseudo labels first (ignore / negative only)
    g2netpl_l1: float = setting(0.5, ge=0.0)  # η of Ψ's L1 term |ŷ − p|
    g2netpl_curriculum: bool = setting(True)  # the confidence scheduler (ignore / negative only)

    # read from several sections: field → params key
    PARAMS_KEYS: ClassVar[dict[str, str]] = {
        "name": "rule", "plmcl_eta": "plmcl.eta", "plmcl_alpha": "plmcl.alpha", "plmcl_beta": "plmcl.beta",
        "g2netpl_eta": "g2netpl.eta", "g2netpl_lr": "g2netpl.lr", "g2netpl_steps": "g2netpl.steps",
        "ll_delta": "large_loss.delta", "ll_max_rate": "large_loss.max_rate", "ld_sigma": "label_distribution.sigma",
        "unknown": "unknown", "plmcl_weight": "plmcl.weight", "plmcl_curriculum": "plmcl.curriculum",
        "g2netpl_l1": "g2netpl.l1", "g2netpl_curriculum": "g2netpl.curriculum"}

    @property
    def updates_labels(self) -> bool:
        return self.name in ("plmcl", "g2netpl")

    @property
    def paper_setting(self) -> bool:
        """Unknown entries are no CLIP labels: the partial-label papers' own setting (`ignore`, `negative`)."""
        return self.unknown != "pseudo"

    @property
    def curriculum(self) -> bool:
        """PLMCL's confidence-aware curriculum τ(t) / G2NetPL's confidence scheduler, where they apply: in the
        papers' settings, once the pseudo labels have started from the network's outputs."""
        on = {"plmcl": self.plmcl_curriculum, "g2netpl": self.g2netpl_curriculum}.get(self.name, False)
        return on and self.paper_setting

    @property
    def pseudo_weight(self) -> float:
        """The loss weight of an unknown entry trained on its pseudo label (PLMCL's λ; 1 for every other rule)."""
        return self.plmcl_weight if self.name == "plmcl" else 1.0


NO_RULE = RuleSettings()


def plmcl_update(y: np.ndarray, y_prev: np.ndarray, p: np.ndarray, eta: float, alpha: float,
                 beta: float) -> np.ndarray:
    """One PLMCL pseudo-label step on probabilities: pull towards p plus damped momentum."""
    v = y - y_prev
    return np.clip(y + eta * (p - y) + (alpha - beta) * v, EPS, 1 - EPS)


def g2netpl_update(y: np.ndarray, p: np.ndarray, eta: float, lr: float, steps: int, l1: float = 0.0) -> np.ndarray:
    """`steps` gradient steps of the pseudo-label player on Φ(ŷ) = H(ŷ) + η·KL(ŷ ‖ p) + η₁·|ŷ − p|
    (η₁ = `l1`, Ψ's L1 term; its subgradient is η₁·sign(ŷ − p))."""
    zp = logit(p, EPS)
    for _ in range(steps):
        zy = logit(y, EPS)
        grad = -zy + eta * (zy - zp) + l1 * np.sign(y - p)
        y = np.clip(y - lr * grad, EPS, 1 - EPS)
    return y


def curriculum_mask(y: np.ndarray, known: np.ndarray, progress: float) -> np.ndarray:
    """bool [N, C]: the unknown entries whose pseudo label trains this epoch (PLMCL's τ(t), G2NetPL's scheduler).

    The summary paper (000 §III.A) gives only "a per-class learning threshold τ(t) based on the expected
    prediction margin, enabling progressive easy-to-hard training". Ours: an entry's margin is |2ŷ − 1|;
    τ_c(t) = (1 − t)·E[margin over class c's unknown entries], t = `progress` in [0, 1] (the share of the
    pseudo-labelled epochs done), so the first epochs train on each class's more confident half and the last
    on every entry.
    """
    unknown = ~np.asarray(known, bool)
    margin = np.abs(2.0 * np.asarray(y, np.float64) - 1.0)
    counts = unknown.sum(0)
    expected = np.divide(np.where(unknown, margin, 0.0).sum(0), counts, out=np.zeros(margin.shape[1]),
                         where=counts > 0)
    tau = (1.0 - float(np.clip(progress, 0.0, 1.0))) * expected
    return unknown & (margin >= tau[None, :])


def unknown_targets(targets: torch.Tensor, labelled: torch.Tensor, known: torch.Tensor, pseudo: torch.Tensor,
                    unknown: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, labelled) of a batch [B, C] in the papers' settings: an unknown entry without a pseudo label in
    training (`pseudo` False) is absent (`negative`) or carries no loss (`ignore`; its target is set to ½, so a
    transfer that raises or lowers it gives it exactly σ(±raise_logit))."""
    free = ~known & ~pseudo
    if unknown == "negative":
        return torch.where(free, torch.zeros_like(targets), targets), labelled
    return torch.where(free, torch.full_like(targets, 0.5), targets), labelled & ~free


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

    `labelled` (bool, like logits): entries without a target (a composite's hidden host labels, unknown entries
    under `unknown: ignore`) carry no loss. `weights` (like logits) weight the entries (label distributions,
    PLMCL's λ). Under `unknown: ignore` each image's loss is normalised by its labelled weight and images with
    none are left out (partial BCE, Durand et al. 2019 with g(p_y) = 1/p_y); else by the batch's.
    """
    if rule.name not in ("large_loss", "label_distribution") and (labelled is None or bool(labelled.all())) \
            and weights is None:
        return F.binary_cross_entropy_with_logits(logits, targets)  # plain mean, bit for bit the rule-free loss
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    w = torch.ones_like(loss) if labelled is None else labelled.float()
    if rule.name == "large_loss":
        rate = rejection_rate(epoch, rule.ll_delta, rule.ll_max_rate)
        w = w * large_loss_keep(loss, ~known, rate)
    if weights is not None:
        w = w * weights
    if rule.unknown == "ignore":
        per_image = (loss * w).sum(1) / w.sum(1).clamp(min=1e-12)
        has = w.sum(1) > 0
        return per_image[has].mean() if bool(has.any()) else (loss * 0.0).sum()
    return (loss * w).sum() / w.sum().clamp(min=1.0)


def update_pseudo_labels(y: np.ndarray, y_prev: np.ndarray, predictions: np.ndarray, known: np.ndarray,
                         rule: RuleSettings) -> np.ndarray:
    """The epoch-end label step of `plmcl` / `g2netpl` on probabilities [N, C]; known entries unchanged."""
    if rule.name == "plmcl":
        new = plmcl_update(y, y_prev, predictions, rule.plmcl_eta, rule.plmcl_alpha, rule.plmcl_beta)
    elif rule.name == "g2netpl":
        new = g2netpl_update(y, predictions, rule.g2netpl_eta, rule.g2netpl_lr, rule.g2netpl_steps, rule.g2netpl_l1)
    else:
        return y
    return np.where(known, y, new)
