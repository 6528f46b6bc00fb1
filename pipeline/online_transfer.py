"""Known-label transfers that train with the adapter in `sew` (HST: pipeline.hst, TRM-ML: pipeline.trm): what
the training loop hands them and what they hand back. Each reads the known labels of a batch as signs
(−1 known absent, 0 unknown, 1 known present), adds its losses to the M-step and names the unknown entries
it raises or lowers; after training it labels the plain images the same way, for the refined Z."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class AdapterPass:
    """What the adapter computes on a batch, in the order it computes it."""

    class_features: torch.Tensor  # [B, C, hidden] the decoder's output for each class query
    logits: torch.Tensor  # [B, C] the per-query head's (the M-step's; TRM-ML's query-level prediction)
    # where the adapter has a region head (TRM-ML), whichever head predicts: the cells in the joint space
    # [B, T, embed] and the class queries' attention over them [B, C, T]
    joint: torch.Tensor | None = None
    attention: torch.Tensor | None = None


def adapter_pass(adapter: nn.Module, features: torch.Tensor) -> AdapterPass:
    tokens = adapter.tokens(features)
    if adapter.cfg.embed == 0:  # no region head
        class_features = adapter.decode(tokens)
        return AdapterPass(class_features, adapter.head(class_features))
    class_features, attention = adapter.attend(tokens)
    return AdapterPass(class_features, adapter.head(class_features), adapter.joint_cells(features), attention)


@dataclass
class TransferStep:
    loss: torch.Tensor  # the transfer's own weighted losses, added to the M-step's
    raised: torch.Tensor  # bool [B, C]: unknown entries labelled present
    lowered: torch.Tensor  # bool [B, C]: unknown entries labelled absent


class OnlineTransfer(nn.Module):
    """The interface train_adapter_em drives; its parameters and buffers are checkpointed with the adapter."""

    raise_logit: float  # a raised entry's target is at least σ(raise_logit), a lowered one at most σ(−raise_logit)
    threshold_lr: float | None = None  # parameters named theta_* learn at this constant rate, not the adapter's

    def epoch_start(self, epoch: int, known_positive_features: Callable[[], torch.Tensor], known_sign: torch.Tensor
                    ) -> None:
        """Called before each epoch; `known_positive_features()` computes the adapter's class features of the
        plain training images at their known positives: [M, hidden], row-major over (image, class) as
        `(known_sign > 0).nonzero()` lists them."""

    def step(self, out: AdapterPass, known_sign: torch.Tensor, targets: torch.Tensor, labelled: torch.Tensor,
             epoch: int) -> TransferStep:
        raise NotImplementedError

    def final(self, out: AdapterPass, known_sign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raised, lowered) bool [B, C] on a batch of plain images after training, each row on its own."""
        raise NotImplementedError

    def optimizer_groups(self, lr: float, weight_decay: float) -> tuple[dict, dict | None]:
        """(the group that follows the adapter's schedule, the thresholds' constant-rate group or None)."""
        thresholds = [p for name, p in self.named_parameters() if name.rsplit(".", 1)[-1].startswith("theta")]
        rest = [p for name, p in self.named_parameters() if not name.rsplit(".", 1)[-1].startswith("theta")]
        scheduled = {"params": rest, "lr": lr, "weight_decay": weight_decay}
        if not thresholds:
            return scheduled, None
        return scheduled, {"params": thresholds, "lr": self.threshold_lr, "weight_decay": 0.0}


def apply_targets(targets: torch.Tensor, step: TransferStep, labelled: torch.Tensor, raise_logit: float
                  ) -> torch.Tensor:
    """Soft targets with the step's raised entries at least σ(raise_logit) and lowered ones at most σ(−raise_logit)."""
    high = float(torch.sigmoid(torch.tensor(raise_logit)))
    out = torch.where(step.raised & labelled, targets.clamp(min=high), targets)
    return torch.where(step.lowered & labelled & ~step.raised, out.clamp(max=1 - high), out)


def known_sign_of(z0: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """{−1, 0, 1} [..., C]: the sign of the known entries (keep) of the label logits z0, 0 where unknown."""
    return torch.where(keep, torch.sign(z0), torch.zeros_like(z0)).to(torch.int8)


def composite_known_sign(host_sign: torch.Tensor, classes_labelled: torch.Tensor, hidden: torch.Tensor | None
                         ) -> torch.Tensor:
    """The known labels of composites [B, C]: the host's, except that a known negative an overlay labels
    becomes unknown (the overlay may show it) and a host label an overlay may hide is unknown."""
    sign = torch.where(classes_labelled & (host_sign < 0), torch.zeros_like(host_sign), host_sign)
    if hidden is not None:
        sign = torch.where(hidden, torch.zeros_like(sign), sign)
    return sign
