"""The settings of the training steps that more than one stage reads, as typed dataclasses with their
ranges checked on construction: the composites and EM (`sew`, read by the sew and ceiling stages), the
adapter's size (`sew.adapter`), and the partial-label training rule (`rule` and its section, read by sew
and distill). Kept free of torch so that reading params stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RULES = ("none", "plmcl", "g2netpl", "large_loss", "label_distribution")
OVERLAY_LABELS = ("pooled", "all")
PASTES = ("feather", "rectangle")
E_STEPS = ("predictions", "backprop")


@dataclass(frozen=True)
class RuleSettings:
    name: str = "none"
    plmcl_eta: float = 0.5  # pull towards the prediction
    plmcl_alpha: float = 0.9  # momentum
    plmcl_beta: float = 0.5  # velocity damping
    g2netpl_eta: float = 2.0  # KL penalty weight (> 1 sharpens, ≤ 1 lets entropy win)
    g2netpl_lr: float = 0.05
    g2netpl_steps: int = 10
    ll_delta: float = 0.1  # % of the batch's entries rejected more per epoch
    ll_max_rate: float = 0.5
    ld_sigma: float = 0.1  # RBF width on cosine distance

    def __post_init__(self):
        if self.name not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.name!r}")

    @property
    def updates_labels(self) -> bool:
        return self.name in ("plmcl", "g2netpl")


NO_RULE = RuleSettings()


@dataclass(frozen=True)
class SewSettings:
    p: float = 0.5  # probability of one more overlay
    q: float = 0.5  # overlay box side as a fraction of the host side, shared among n overlays (q/√n)
    max_overlays: int = 3  # L; 0 disables sewing
    pool_k: int | None = None  # top-k images per class by z⁰ in the overlay pool; None: pool_share
    pool_share: float = 0.25  # k = ⌈share · N / C⌉: a share of the images where a class is likeliest salient
    overlay_label: str = "pooled"  # see OVERLAY_LABELS
    paste: str = "feather"  # see PASTES
    placement_tries: int = 8  # random positions tried per overlay; the least covering one is taken
    cover_limit: float = 0.5  # a host label whose view is covered beyond this share is ignored
    e_step: str = "predictions"  # see E_STEPS
    e_weight: float = 0.5  # predictions: weight of the adapter's logits in the E-step
    e_rounds: int = 1  # predictions: E-steps, evenly spaced over the epochs (the last after the last epoch)
    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-3  # adapter
    estimator_lr: float = 1e-2  # Z, backprop E-step only
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.p < 1:
            raise ValueError(f"sew.p must be in [0, 1), got {self.p}")
        if not 0 < self.q <= 1:
            raise ValueError(f"sew.q must be in (0, 1], got {self.q}")
        if self.max_overlays < 0 or (self.pool_k is not None and self.pool_k < 1):
            raise ValueError("sew.L must be >= 0 and sew.k >= 1")
        if not 0 < self.pool_share <= 1:
            raise ValueError(f"sew.pool_share must be in (0, 1], got {self.pool_share}")
        if self.overlay_label not in OVERLAY_LABELS:
            raise ValueError(f"sew.overlay_label must be one of {OVERLAY_LABELS}, got {self.overlay_label!r}")
        if self.paste not in PASTES:
            raise ValueError(f"sew.paste must be one of {PASTES}, got {self.paste!r}")
        if self.e_step not in E_STEPS:
            raise ValueError(f"sew.e_step must be one of {E_STEPS}, got {self.e_step!r}")
        if self.e_rounds < 1 or self.e_rounds > self.epochs:
            raise ValueError(f"sew.e_rounds must be in [1, sew.epochs], got {self.e_rounds}")
        if self.placement_tries < 1 or not 0 < self.cover_limit <= 1 or not 0 <= self.e_weight <= 1:
            raise ValueError("sew.placement_tries must be >= 1, sew.cover_limit in (0, 1], sew.e_weight in [0, 1]")

    @property
    def e_step_epochs(self) -> tuple[int, ...]:
        """After which epochs (counted from 1) the predictions E-step runs: e_rounds of them, evenly spaced."""
        return tuple(math.ceil(self.epochs * (r + 1) / self.e_rounds) for r in range(self.e_rounds))

    def pool_size(self, n_images: int, n_classes: int) -> int:
        if self.pool_k is not None:
            return self.pool_k
        return max(1, math.ceil(self.pool_share * n_images / max(1, n_classes)))


@dataclass(frozen=True)
class AdapterOptions:
    """The adapter's size (sew.adapter); the rest of pipeline.adapter.AdapterConfig follows the tower."""

    hidden: int = 128
    layers: int = 1
    heads: int = 4
    residual: float = 0.2
