"""Training rules for partial labels, shared by the sew adapter (EM) and the small-CNN student: what the
training loops call (`rule_loss`, `update_pseudo_labels`, `curriculum_mask`, `unknown_targets`) and the base
class `Rule` of every rule method, itself the method `none` (pipeline.method_registry).

What an unknown train entry is, top-level `unknown` (`Rule.unknown`):
- `pseudo` (ours): the corrected CLIP pseudo label; the rules start from it (ŷ(0) = the corrected label), and
  a rule's ŷ is the prediction TailorCLIP's E-step refines the labels towards (pipeline.em), not a target the
  adapter retrains on every epoch.
- `ignore` and `negative`: the partial-label papers' own settings, in which no CLIP label exists. The adapter
  trains on the plain images (no composites, no EM: both read CLIP's labels) and an unknown entry carries no
  loss (partial BCE, Durand et al. 2019: each image's BCE over its known entries, normalised by their number,
  i.e. g(p_y) = 1/p_y) or is absent (assume negative, AN, Cole et al. 2021), until a rule gives it a label.
  The refined labels of the unknown entries are then the trained network's outputs (or the rule's ŷ).

The rules, each in its own module with its paper's section and equations: pipeline.plmcl (PLMCL),
pipeline.g2netpl (G2NetPL), pipeline.large_loss (LL-R, LL-Ct), pipeline.label_distribution (MulSupConLD). A
rule changes the training through the hooks of `Rule`: an epoch-end label step (`update`), entries left out of
the loss (`keep`) or, for a rule that `corrects`, trained on their flipped label instead, per-entry loss weights
(`entry_weights`), a loss on the network's image representation (`representation_loss`, which then reads the
entry weights instead of the BCE), the weight of pseudo-labelled entries (`pseudo_weight`) and the curriculum
(`uses_curriculum`). Known labels are never changed by any rule and always supervise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.method_registry import register_method
from pipeline.settings import Settings, setting

# What an unknown train entry is to the M-step (top-level `unknown`): `pseudo` the corrected CLIP label (ours);
# the partial-label papers' own settings, with no CLIP label anywhere: `ignore` (no loss: partial BCE,
# Durand et al. 2019, each image's loss normalised by its known entries) and `negative` (assume negative, AN:
# Cole et al. 2021).
UNKNOWN = ("pseudo", "ignore", "negative")
EPS = 1e-4  # soft labels stay inside (0, 1) so that their logits are finite


@register_method
@dataclass(frozen=True)
class Rule(Settings):
    """`method: none`: the M-step as it is (TailorCLIP's EM moves the pseudo labels in `sew`), and the base
    class of every training rule. Built from the top level of the params: `unknown` there, a rule's own
    constants under its section (each subclass's PARAMS_KEYS, e.g. `plmcl.eta`)."""

    unknown: str = setting("pseudo", choices=UNKNOWN)

    NAME: ClassVar[str] = "none"
    ROLE: ClassVar[str] = "rule"
    PARAMS_KEYS: ClassVar[dict[str, str]] = {"unknown": "unknown"}
    UPDATES_LABELS: ClassVar[bool] = False  # an epoch-end label step (`update`): it feeds or replaces the E-step
    ENTRY_LOSS: ClassVar[bool] = False  # weighs the loss entry by entry even where nothing else does
    REPRESENTATION: ClassVar[bool] = False  # adds `representation_loss`, which takes the entry weights

    @property
    def paper_setting(self) -> bool:
        """Unknown entries are no CLIP labels: the partial-label papers' own setting (`ignore`, `negative`)."""
        return self.unknown != "pseudo"

    @property
    def uses_curriculum(self) -> bool:
        """Whether the pseudo-labelled entries enter the loss by a curriculum (PLMCL's τ(t), G2NetPL's scheduler)."""
        return False

    @property
    def pseudo_weight(self) -> float:
        """The loss weight of an unknown entry trained on its pseudo label (PLMCL's and G2NetPL's λ)."""
        return 1.0

    def update(self, y: np.ndarray, y_prev: np.ndarray, p: np.ndarray) -> np.ndarray:
        """The epoch-end label step on probabilities [N, C] (UPDATES_LABELS rules): the new ŷ from ŷ(t), ŷ(t − 1)
        and the network's predictions p; known entries are put back by the caller."""
        return y

    def keep(self, loss: torch.Tensor, unknown: torch.Tensor, epoch: int) -> torch.Tensor | None:
        """bool like `loss`: the entries that stay in this batch's loss as they are, or None (all)."""
        return None

    @property
    def corrects(self) -> bool:
        """Whether the entries `keep` leaves out train on their flipped label (1 − target) instead (LL-Ct)."""
        return False

    def entry_weights(self, targets_logit: np.ndarray, scores: str | Path, rows: np.ndarray) -> np.ndarray | None:
        """Per-entry loss weights [len(rows), C] of the train images at the score store's `rows`, or None."""
        return None

    def representation_loss(self, embeddings: torch.Tensor, targets: torch.Tensor, labelled: torch.Tensor | None,
                            weights: torch.Tensor | None) -> torch.Tensor:
        """A loss on the batch's image representations [B, D] from its soft targets [B, C] (REPRESENTATION
        rules): `labelled` as in `rule_loss`, `weights` the entry weights of the batch's rows."""
        raise NotImplementedError


NO_RULE = Rule()


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


def rule_loss(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, rule: Rule,
              epoch: int, weights: torch.Tensor | None = None,
              labelled: torch.Tensor | None = None) -> torch.Tensor:
    """Partial BCE of logits against soft targets (probabilities) under the rule's weighting.

    `labelled` (bool, like logits): entries without a target (a composite's hidden host labels, unknown entries
    under `unknown: ignore`) carry no loss. `weights` (like logits) weight the entries (label distributions,
    PLMCL's λ); `rule.keep` leaves entries out (LL-R). Under `unknown: ignore` each image's loss is normalised
    by its labelled weight and images with none are left out (partial BCE, Durand et al. 2019 with
    g(p_y) = 1/p_y); else by the batch's.
    """
    if not rule.ENTRY_LOSS and (labelled is None or bool(labelled.all())) and weights is None:
        return F.binary_cross_entropy_with_logits(logits, targets)  # plain mean, bit for bit the rule-free loss
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    w = torch.ones_like(loss) if labelled is None else labelled.float()
    keep = rule.keep(loss, ~known, epoch)
    if keep is not None and rule.corrects:
        loss = torch.where(keep, loss, F.binary_cross_entropy_with_logits(logits, 1.0 - targets, reduction="none"))
    elif keep is not None:
        w = w * keep
    if weights is not None:
        w = w * weights
    if rule.unknown == "ignore":
        per_image = (loss * w).sum(1) / w.sum(1).clamp(min=1e-12)
        has = w.sum(1) > 0
        return per_image[has].mean() if bool(has.any()) else (loss * 0.0).sum()
    return (loss * w).sum() / w.sum().clamp(min=1.0)


def training_loss(logits: torch.Tensor, embeddings: torch.Tensor | None, targets: torch.Tensor,
                  known: torch.Tensor, rule: Rule, epoch: int, weights: torch.Tensor | None = None,
                  labelled: torch.Tensor | None = None, known_weights: torch.Tensor | None = None) -> torch.Tensor:
    """`rule_loss`, plus the rule's `representation_loss` on the image representations `embeddings` [B, D] for
    a REPRESENTATION rule, which takes the entry `weights` (the BCE then has only `known_weights`).
    `known_weights` (like logits, or None): the BCE's weight of each entry by whether it is known
    (`sew.known_weight`), on top of the rule's."""
    if not rule.REPRESENTATION:
        if known_weights is not None:
            weights = known_weights if weights is None else weights * known_weights
        return rule_loss(logits, targets, known, rule, epoch, weights, labelled)
    return (rule_loss(logits, targets, known, rule, epoch, known_weights, labelled)
            + rule.representation_loss(embeddings, targets, labelled, weights))


def update_pseudo_labels(y: np.ndarray, y_prev: np.ndarray, predictions: np.ndarray, known: np.ndarray,
                         rule: Rule) -> np.ndarray:
    """The rule's epoch-end label step (`Rule.update`) on probabilities [N, C]; known entries unchanged."""
    if not rule.UPDATES_LABELS:
        return y
    return np.where(known, y, rule.update(y, y_prev, predictions))
