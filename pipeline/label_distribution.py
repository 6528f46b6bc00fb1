"""MulSupConLD's label distributions (summary paper 004; docs/references.md#mulsupconld;
../shared/papers/reconstructions/mulsupconld.md), a training rule (method `label_distribution`) of the adapter in
`sew` and the small-CNN student in `distill`.

What the summary gives (004, "Method Summary"): label distributions recovered from the logical labels balance
the loss contributions of the labels in a multi-label supervised contrastive loss (a key is a positive of an
anchor when their label sets intersect, "ANY"), the representation then fine-tuned with BCE. Ours:
- The distribution (MulSupCon_RLD, the RBF variant): image i's positives j get d_ij ∝ exp(−(δ_ij − min_k δ_ik) / σ),
  δ the cosine distance between the image's CLIP embedding and class j's text embedding, Σ_j d_ij = 1 over the
  positives (`label_distribution_weights`, which scales them to mean 1). The exact RBF and the contrastive
  variant (CLD) are not recovered.
- The weighted contrastive loss (`weighted_contrastive_loss`, the reconstruction's reading (b)): one SupCon
  term per anchor i over the other images k of the batch, key k's weight the share of i's distribution on the
  labels they share, w_ik = Σ_j d_ij y_kj (w_ik > 0 exactly for the ANY positives), τ = `temperature` (0.1, as
  MulSupCon's code). The representation is the network's pooled image feature: the mean of the adapter's
  class features (its per-class heads read them), the small CNN's pooled conv features.
- Ours where the paper differs: it pre-trains 400 epochs with the contrastive loss on two augmented views and a
  MoCo queue, then fine-tunes 100 with BCE; here both losses train together, L = BCE + `weight` · L_con, on one
  view and the batch's keys, since `sew` trains a few epochs and its E-step needs the classifier from the first.
  The BCE is plain (its fine-tuning loss): the distribution weighs the contrastive pairs only. Until this
  form the distribution weighed the BCE's positives instead (the README's older label_distribution rows).
Its paper trains with every label known (`ratio: 1.0`); in the papers' settings the labels and the
distribution are the known positives only, never CLIP's labels (stages/sew.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.method_registry import register_method
from pipeline.rules import Rule
from pipeline.settings import setting
from pipeline.storage import scored_embeddings
from pipeline.transfer import unit_rows


def label_distribution_weights(emb: np.ndarray, text: np.ndarray, positive: np.ndarray,
                               sigma: float) -> np.ndarray:
    """Weights [N, C]: positives by an RBF label distribution (mean 1 over an image's positives), else 1."""
    dist = 1.0 - unit_rows(emb) @ unit_rows(text).T  # cosine distance, [N, C]
    affinity = np.where(positive, np.exp(-(dist - dist.min(1, keepdims=True)) / sigma), 0.0)
    total = affinity.sum(1, keepdims=True)
    n_pos = positive.sum(1, keepdims=True)
    weights = np.divide(affinity * n_pos, total, out=np.ones_like(affinity), where=total > 0)
    return np.where(positive, weights, 1.0).astype(np.float32)


def weighted_contrastive_loss(embeddings: torch.Tensor, positive: torch.Tensor, distribution: torch.Tensor,
                              temperature: float) -> torch.Tensor:
    """Mean over anchors of −Σ_k w_ik log softmax_k(cos(e_i, e_k) / τ) / Σ_k w_ik, k ≠ i over the batch, with
    w_ik = Σ_j d_ij [k holds j] and d_i image i's distribution over its positives (`distribution` [B, C] ≥ 0
    read at `positive` [B, C] bool, normalised here). Anchors without a positive key are left out; 0 if none."""
    unit = F.normalize(embeddings, dim=-1)
    own = torch.eye(len(unit), dtype=torch.bool, device=unit.device)
    pos = positive.to(unit.dtype)
    d = distribution.to(unit.dtype) * pos
    d = d / d.sum(1, keepdim=True).clamp(min=1e-12)
    pair = (d @ pos.T).masked_fill(own, 0.0)  # [B, B]
    log_prob = (unit @ unit.T / temperature).masked_fill(own, float("-inf")).log_softmax(1).masked_fill(own, 0.0)
    total = pair.sum(1)
    has = total > 0
    if not bool(has.any()):
        return embeddings.sum() * 0.0
    return (-(pair * log_prob).sum(1)[has] / total[has]).mean()


@register_method
@dataclass(frozen=True)
class LabelDistribution(Rule):
    """Method `label_distribution`, constants in section `label_distribution`."""

    sigma: float = setting(0.1, ge=1e-6)  # RBF width on the cosine distance
    weight: float = setting(0.1, ge=0.0)  # of the contrastive loss beside the BCE (chosen: README)
    temperature: float = setting(0.1, gt=0.0)  # τ of the contrastive loss (MulSupCon's code)

    NAME: ClassVar[str] = "label_distribution"
    PARAMS_KEYS: ClassVar[dict[str, str]] = {"unknown": "unknown", "sigma": "label_distribution.sigma",
                                             "weight": "label_distribution.weight",
                                             "temperature": "label_distribution.temperature"}
    REPRESENTATION: ClassVar[bool] = True

    def entry_weights(self, targets_logit: np.ndarray, scores: str | Path, rows: np.ndarray) -> np.ndarray:
        """The label distributions of the positives of `targets_logit` (> 0) from the embeddings of the score
        store's `rows` (mean 1 over an image's positives; 1 elsewhere): what the contrastive loss reads."""
        emb, text = scored_embeddings(scores)
        return label_distribution_weights(emb[rows], text, targets_logit > 0, self.sigma)

    def representation_loss(self, embeddings: torch.Tensor, targets: torch.Tensor, labelled: torch.Tensor | None,
                            weights: torch.Tensor | None) -> torch.Tensor:
        positive = targets > 0.5
        if labelled is not None:
            positive = positive & labelled
        distribution = torch.ones_like(targets) if weights is None else weights
        return self.weight * weighted_contrastive_loss(embeddings, positive, distribution, self.temperature)
