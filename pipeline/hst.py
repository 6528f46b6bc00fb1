"""HST: heterogeneous semantic transfer (paper 003, Chen et al., IJCV; docs/references.md#hst), online in
`sew`'s adapter training, on the known labels of the partial-label setting (ratio > 0).

- SARL (§3.1, eq. 1): class c's category-specific feature f_c is the adapter's decoder output for class c's
  query: one learnable query per class attending over the tower's grid, as semantic decoupling attends with
  a class embedding, and class c's logit reads only f_c.
- IST (§3.2): φ_intra maps [f_i, f_j] to the probability p_ij that i and j co-occur in the image (eq. 3;
  laid out as the authors' code: a shared projection, two layers on the pair, one weight vector per pair).
  It trains on every pair with the asymmetric loss (eq. 5–6: γ⁺ = 1, γ⁻ = 2, m = 0.05): a pair is positive
  when both labels are known positives, negative otherwise. An unknown entry i scores the mean of p_ij over
  the image's known positives j (eq. 4 sums; the authors' code averages, which keeps one θ for images with
  one known positive or many) and is raised when the score reaches θ_intra.
- CST (§3.3): per class, K-means prototypes of f_c over the images where c is a known positive (cosine
  K-means, since the similarity is a cosine), recomputed every `prototype_every` epochs from `start_epoch`
  (the authors' script: 10 prototypes every 5 epochs from epoch 5 of 20). An unknown entry scores its mean
  cosine to its class's prototypes (eq. 7–8) and is raised when that reaches θ_cross. The ranking loss
  (eq. 9–11) pulls f_c of two images where c is a known positive together and pushes every other pair of
  images where c is known apart.
- DTL (§3.4): θ_intra and θ_cross, one scalar each, start at 1 (the authors' code) and learn from the known
  entries by the partial BCE (eq. 16) of d = s − θ (eq. 12–15), in one of two forms (`dtl`):
  - `sigmoid` (ours, the default): σ(d / τ). The scores are cosines and means of probabilities whose gaps
    are ~0.1, so at τ = 1 (the paper) σ(d) is nearly flat and θ settles where the class balance puts it,
    above every score (measured: nothing is raised). Only θ learns from this loss (the scores are
    detached); a known entry's IST score leaves out its own diagonal, so it is scored as an unknown one
    would be, and an entry is raised when s ≥ θ.
  - `clamp` (the authors' code, `loss/HST.py`: getIntraPseudoLabel, getInterPseudoLabel, BCELoss): the BCE
    with logits of clamp(s − θ, 0, 1) against the known entries, reaching θ and the network through s; a
    known positive's IST score counts its own pair as p_ii = 1 and divides by all the image's known
    positives; an entry is raised when s > θ. Under torch ≤ 2.13, which the authors ran, clamp's gradient is
    1 on the closed interval [0, 1]: an image's only known positive scores exactly 1 = θ(0), so it starts θ
    moving down. torch 2.14 passes no gradient at the bounds, and with it θ would stay at 1 and nothing
    would ever be raised (our earlier reading of that code, measured on 2.14); `closed_clamp` keeps the
    authors' subgradient. θ_cross does stay at 1 there (a mean cosine to K-means prototypes is below 1), so
    CST raises nothing in that form, as in the authors' code, and only its losses act.
- Loss (eq. 17–18): from `start_epoch` the raised entries are positives of the classification loss (their
  target is σ(raise_logit) instead of the pseudo label); λ1·L_ist + λ2·L_cst + λ3·(L_dtl,intra + L_dtl,cross)
  with λ = 10, 0.05, 0.1 (§3.5). After training, the raised entries of the plain images are raised in the
  refined labels the student learns from, as HST's pseudo labels train its classifier.

The authors' prototype loss (PrototypeContrastiveLoss in their code) is not in the paper and is left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.method_registry import register_method
from pipeline.online_transfer import AdapterPass, OnlineTransfer, TransferStep
from pipeline.settings import Settings, setting
from pipeline.transfer import spherical_kmeans

MODULES = ("ist", "cst", "both")
DTL_FORMS = ("sigmoid", "clamp")


@register_method
@dataclass(frozen=True)
class HstSettings(Settings):
    """Method `hst`, section `hst`: HST's intra- and cross-image transfer (paper 003), trained with the adapter
    in `sew`."""

    modules: str = setting("both", choices=MODULES)  # ist | cst | both
    start_epoch: int = setting(4, ge=0)  # pseudo labels and thresholds from this epoch (authors: 5 of 20)
    prototypes: int = setting(10, ge=1)  # K per class
    prototype_every: int = setting(4, ge=1)  # epochs between prototype updates (authors: 5)
    intra_weight: float = setting(10.0, ge=0.0)  # λ1
    cross_weight: float = setting(0.05, ge=0.0)  # λ2
    threshold_weight: float = setting(0.1, ge=0.0)  # λ3
    dtl: str = setting("sigmoid", choices=DTL_FORMS)  # sigmoid: σ((s − θ)/τ) into θ | clamp: the authors' code's
    temperature: float = setting(0.05, gt=0.0)  # τ of the DTL loss σ((s − θ)/τ); 1 is the paper's
    threshold_lr: float = setting(0.01, ge=0.0)  # θ_intra and θ_cross (Adam)
    raise_logit: float = setting(4.0, ge=0.0)  # a raised entry's target: at least this logit
    hidden: int = setting(128, ge=1)  # width of φ_intra
    seed: int = setting(0)

    SECTION: ClassVar[str] = "hst"
    NAME: ClassVar[str] = "hst"
    ROLE: ClassVar[str] = "online"
    REGION_HEAD: ClassVar[bool] = False  # it reads the class features only

    def transfer(self, adapter: nn.Module) -> Hst:
        """HST for this adapter: φ_intra and the prototypes sized by its classes and decoder width."""
        return Hst(self, adapter.cfg.n_classes, adapter.cfg.hidden)

    def prediction_head(self, paper_setting: bool) -> str:
        """The adapter head it trains and predicts with: the per-query head (its f_c's classifiers)."""
        return "query"

    @property
    def ist(self) -> bool:
        return self.modules in ("ist", "both")

    @property
    def cst(self) -> bool:
        return self.modules in ("cst", "both")

    def prototypes_due(self, epoch: int) -> bool:
        return self.cst and epoch >= self.start_epoch and (epoch - self.start_epoch) % self.prototype_every == 0


def pair_index(n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(i, j) of every pair i < j, row-major. [P], [P]"""
    i, j = torch.triu_indices(n_classes, n_classes, offset=1)
    return i, j


def asymmetric_loss(logits: torch.Tensor, positive: torch.Tensor, gamma_pos: float = 1.0, gamma_neg: float = 2.0,
                    clip: float = 0.05, eps: float = 1e-8) -> torch.Tensor:
    """Mean asymmetric loss (HST eq. 6, after Ridnik et al.): positives −(1 − p)^γ⁺ log p; negatives
    −p_m^γ⁻ log(1 − p_m) with p_m = max(p − m, 0), so easy negatives carry nothing."""
    p = torch.sigmoid(logits)
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p
    pos = -((1 - p) ** gamma_pos) * torch.log(p.clamp(min=eps))
    neg = -(p_neg ** gamma_neg) * torch.log((1 - p_neg).clamp(min=eps))
    return torch.where(positive, pos, neg).mean()


def intra_scores(cooccurrence: torch.Tensor, known_sign: torch.Tensor, own_pair: bool = False) -> torch.Tensor:
    """s[b, i]: the mean of p_ij over image b's known positives j ≠ i (HST eq. 4, averaged); 0 where there is
    no such j. With `own_pair` (the authors' code) a known positive's own pair counts as p_ii = 1 and the mean
    is over all the image's known positives. cooccurrence [B, C, C] with a zero diagonal, known_sign [B, C] in
    {−1, 0, 1}."""
    pos = (known_sign > 0).to(cooccurrence.dtype)
    total = torch.einsum("bij,bj->bi", cooccurrence, pos)
    if own_pair:
        return (total + pos) / pos.sum(1, keepdim=True).clamp(min=1)
    others = pos.sum(1, keepdim=True) - pos  # known positives other than i itself
    return total / others.clamp(min=1)


def has_intra_evidence(known_sign: torch.Tensor) -> torch.Tensor:
    """bool [B, C]: whether entry i has a known positive j ≠ i to be scored from."""
    pos = (known_sign > 0).to(torch.int64)
    return (pos.sum(1, keepdim=True) - pos) > 0


def cross_scores(features: torch.Tensor, prototypes: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """s[b, c]: the mean cosine of f_c to class c's prototypes (HST eq. 7–8); 0 for a class without any.
    features [B, C, D]; prototypes [C, K, D] unit rows, rows beyond counts[c] zero."""
    cos = torch.einsum("bcd,ckd->bck", F.normalize(features, dim=-1), prototypes)
    return cos.sum(-1) / counts.clamp(min=1).to(cos.dtype)


def ranking_loss(features: torch.Tensor, known_sign: torch.Tensor) -> torch.Tensor:
    """HST eq. 9–11 over the batch's pairs of images (m < n) and classes c known in both: 1 − s where c is a
    known positive of both, else 1 + s, s the cosine of f_c^m and f_c^n. Mean; 0 without such pairs."""
    unit = F.normalize(features, dim=-1)
    sim = torch.einsum("mcd,ncd->cmn", unit, unit)  # [C, B, B]
    known = (known_sign != 0).T.to(sim.dtype)  # [C, B]
    pos = (known_sign > 0).T.to(sim.dtype)
    upper = torch.triu(torch.ones_like(sim[0]), diagonal=1)
    both_known = known[:, :, None] * known[:, None, :] * upper
    both_pos = pos[:, :, None] * pos[:, None, :] * upper
    terms = both_pos * (1 - sim) + (both_known - both_pos) * (1 + sim)
    return terms.sum() / both_known.sum().clamp(min=1)


def threshold_loss(scores: torch.Tensor, theta: torch.Tensor, known_sign: torch.Tensor, usable: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """DTL (HST eq. 12–16): partial BCE of σ((s − θ)/τ) against the known entries that can be scored; only θ
    learns (the scores are detached). 0 without such entries."""
    mask = (known_sign != 0) & usable
    if not bool(mask.any()):
        return theta.sum() * 0.0
    d = (scores.detach()[mask] - theta) / temperature
    return F.binary_cross_entropy_with_logits(d, (known_sign[mask] > 0).to(d.dtype))


def closed_clamp(x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """clamp(x, low, high) with gradient 1 on the closed interval [low, high] and 0 outside: torch's subgradient
    up to 2.13 (2.14 passes none at the bounds)."""
    return torch.where((x >= low) & (x <= high), x, x.detach().clamp(low, high))


def clamped_threshold_loss(scores: torch.Tensor, theta: torch.Tensor, known_sign: torch.Tensor) -> torch.Tensor:
    """DTL as the authors' code trains it: the BCE with logits of clamp(s − θ, 0, 1) against the known entries
    (mean), into θ and through s into the network. 0 without known entries."""
    mask = known_sign != 0
    if not bool(mask.any()):
        return theta.sum() * 0.0
    d = closed_clamp(scores[mask] - theta)
    return F.binary_cross_entropy_with_logits(d, (known_sign[mask] > 0).to(d.dtype))


class HstHead(nn.Module):
    """φ_intra, the thresholds θ_intra and θ_cross, and the class prototypes (buffers, so a checkpoint
    carries them) over category-specific features [B, C, dim]."""

    def __init__(self, n_classes: int, dim: int, hidden: int, n_prototypes: int):
        super().__init__()
        self.n_classes = n_classes
        i, j = pair_index(n_classes)
        self.register_buffer("pair_i", i, persistent=False)
        self.register_buffer("pair_j", j, persistent=False)
        self.project = nn.Linear(dim, hidden)
        self.pair = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        n_pairs = len(i)
        self.pair_weight = nn.Parameter(torch.randn(n_pairs, hidden) * hidden ** -0.5)
        self.pair_bias = nn.Parameter(torch.zeros(n_pairs))
        self.theta_intra = nn.Parameter(torch.tensor(1.0))
        self.theta_cross = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("prototypes", torch.zeros(n_classes, n_prototypes, dim))
        self.register_buffer("prototype_counts", torch.zeros(n_classes, dtype=torch.long))

    def pair_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The co-occurrence logit of every pair i < j (eq. 3). [B, P]"""
        h = self.project(features)
        out = self.pair(torch.cat([h[:, self.pair_i], h[:, self.pair_j]], dim=-1))
        return (out * self.pair_weight).sum(-1) + self.pair_bias

    def cooccurrence(self, pair_logits: torch.Tensor) -> torch.Tensor:
        """P [B, C, C]: the pairs' probabilities, symmetric, zero diagonal."""
        b = pair_logits.shape[0]
        p = torch.zeros(b, self.n_classes, self.n_classes, dtype=pair_logits.dtype, device=pair_logits.device)
        prob = torch.sigmoid(pair_logits)
        p[:, self.pair_i, self.pair_j] = prob
        p[:, self.pair_j, self.pair_i] = prob
        return p

    def set_prototypes(self, features: np.ndarray, classes: np.ndarray, seed: int) -> None:
        """K-means prototypes of every class from the class features [M, D] of its known positives, each the
        feature f_c of one image at a class c it is known to hold (classes [M])."""
        k = self.prototypes.shape[1]
        protos = np.zeros(tuple(self.prototypes.shape), np.float32)
        counts = np.zeros(self.n_classes, np.int64)
        for c in range(self.n_classes):
            centres = spherical_kmeans(features[classes == c].astype(np.float64), k, 20, seed + c)
            protos[c, : len(centres)] = centres
            counts[c] = len(centres)
        self.prototypes.copy_(torch.from_numpy(protos))
        self.prototype_counts.copy_(torch.from_numpy(counts))

    @property
    def has_prototypes(self) -> bool:
        return bool(self.prototype_counts.sum() > 0)


class Hst(OnlineTransfer):
    """HST's modules for one training run (pipeline.online_transfer): the losses and pseudo labels of a batch,
    the prototypes at the start of the epochs that name them, and the final raise."""

    def __init__(self, settings: HstSettings, n_classes: int, dim: int):
        super().__init__()
        self.settings = settings
        self.head = HstHead(n_classes, dim, settings.hidden, settings.prototypes)
        self.raise_logit = settings.raise_logit
        self.threshold_lr = settings.threshold_lr

    def scores(self, features: torch.Tensor, known_sign: torch.Tensor,
               pair_logits: torch.Tensor | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{module: (scores [B, C], where they are defined [B, C])} for the modules on."""
        s, out = self.settings, {}
        authors = s.dtl == "clamp"  # every entry scored, as the authors' code scores them
        if s.ist:
            logits = self.head.pair_logits(features) if pair_logits is None else pair_logits
            score = intra_scores(self.head.cooccurrence(logits), known_sign, own_pair=authors)
            out["intra"] = (score, torch.ones_like(score, dtype=torch.bool) if authors
                            else has_intra_evidence(known_sign))
        if s.cst and self.head.has_prototypes:
            counts = self.head.prototype_counts
            defined = (counts > 0).unsqueeze(0).expand_as(known_sign)
            out["cross"] = (cross_scores(features, self.head.prototypes, counts), defined)
        return out

    def raise_mask(self, scores: dict[str, tuple[torch.Tensor, torch.Tensor]], known_sign: torch.Tensor
                   ) -> torch.Tensor:
        """bool [B, C]: unknown entries whose score reaches its module's threshold (eq. 4, 8)."""
        raised = torch.zeros_like(known_sign, dtype=torch.bool)
        thetas = {"intra": self.head.theta_intra, "cross": self.head.theta_cross}
        for name, (score, defined) in scores.items():
            theta = thetas[name].detach()
            raised |= defined & (score.detach() > theta if self.settings.dtl == "clamp" else score.detach() >= theta)
        return raised & (known_sign == 0)

    def epoch_start(self, epoch: int, known_positive_features: Callable[[], torch.Tensor], known_sign: torch.Tensor
                    ) -> None:
        if self.settings.prototypes_due(epoch):
            classes = (known_sign > 0).nonzero()[:, 1].numpy()
            self.head.set_prototypes(known_positive_features().numpy(), classes, self.settings.seed)

    def step(self, out: AdapterPass, known_sign: torch.Tensor, targets: torch.Tensor, labelled: torch.Tensor,
             epoch: int) -> TransferStep:
        """The batch's HST losses (eq. 18 less the classification loss) and raised entries."""
        s, features = self.settings, out.class_features
        loss = features.new_zeros(())
        none = torch.zeros_like(known_sign, dtype=torch.bool)
        pair_logits = None
        if s.ist:
            pair_logits = self.head.pair_logits(features)
            pos = known_sign > 0
            pair_positive = pos[:, self.head.pair_i] & pos[:, self.head.pair_j]
            loss = loss + s.intra_weight * asymmetric_loss(pair_logits, pair_positive)
        if s.cst:
            loss = loss + s.cross_weight * ranking_loss(features, known_sign)
        if epoch < s.start_epoch:
            return TransferStep(loss, none, none)
        scores = self.scores(features, known_sign, pair_logits)
        thetas = {"intra": self.head.theta_intra, "cross": self.head.theta_cross}
        for name, (score, defined) in scores.items():
            dtl = (clamped_threshold_loss(score, thetas[name], known_sign) if s.dtl == "clamp"
                   else threshold_loss(score, thetas[name], known_sign, defined, s.temperature))
            loss = loss + s.threshold_weight * dtl
        return TransferStep(loss, self.raise_mask(scores, known_sign), none)

    @torch.no_grad()
    def final(self, out: AdapterPass, known_sign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raised = self.raise_mask(self.scores(out.class_features, known_sign), known_sign)
        return raised, torch.zeros_like(raised)
