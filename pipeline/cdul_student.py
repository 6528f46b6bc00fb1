"""CDUL's student (Abdelfattah et al., ICCV 2023; docs/references.md#cdul): a classifier trained without labels on
CDUL's initial pseudo labels, which it refines as it trains ("gradient-alignment" training), for the CDUL row of
TailorCLIP's Table 1 (`distill.student: cdul`). CDUL's method section is not available offline; this follows
the public reproduction's code as ../shared/papers/reconstructions/cdul.md describes it (its comments cite
§3.2, eq. 7–8):

- initial labels y: CDUL's global-local aggregate, the `cdul` rung of `init` (pipeline.cut.cdul_aggregate);
- prediction p = softmax(f(x)), a softmax over the classes; the network's loss KL(p ‖ ŷ), ŷ = y / Σ y (both
  normalised to sum to 1, as torchmetrics' KLDivergence does), averaged over the batch;
- on an update epoch e (counted from 1: e > `warmup` and e % `update_every` == 0), after each batch's network
  step: g = ∂KL(ŷ ‖ p)/∂y (the arguments reversed, as the code has them), u = S⁻¹(y), u ← u − ψ(y)·g with ψ the
  Gaussian density of mean ½ and sd `sigma` (eq. 8), y ← S(u) (eq. 7); the new y replaces the image's labels.

Ours where the code's choices do not carry over: the classifier is our small CNN from scratch at
`distill.small_cnn`'s size, epochs, batch and lr (the code fine-tunes an ImageNet ResNet-101 with Adam at
1e-5 for up to 100 epochs), trained on the plain images without augmentation, as the code's are. The update
schedule (warm-up 0, every 10th epoch) and σ = 1 are the reproduction's; the paper gives neither.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.resume import Checkpointer
from pipeline.settings import Settings, setting
from pipeline.student import IndexedImages, SmallCNN, StudentTraining, restore_training, save_training

EPS = 1e-6  # labels stay inside (0, 1): their logits and the normalised KL stay finite


@dataclass(frozen=True)
class CdulTraining(Settings):
    """Section `distill.cdul`: the label update of CDUL's student (its network: `distill.small_cnn`)."""

    sigma: float = setting(1.0, gt=0.0)  # sd of the Gaussian ψ (eq. 8; the reproduction's 1)
    update_every: int = setting(10, ge=1)  # an update epoch every this many epochs
    warmup: int = setting(0, ge=0)  # no update in the first epochs

    SECTION: ClassVar[str] = "distill.cdul"

    def updates(self, epoch: int) -> bool:
        """Whether epoch `epoch` (counted from 0) updates the labels."""
        e = epoch + 1
        return e > self.warmup and e % self.update_every == 0


def gaussian_psi(y: torch.Tensor, sigma: float) -> torch.Tensor:
    """ψ(y): the Gaussian density of mean ½ and sd σ (eq. 8): the largest steps for the least sure labels."""
    return torch.exp(-0.5 * ((y - 0.5) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def kl_to_labels(log_p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ ŷ) averaged over the batch: p = exp(log_p) (a softmax), ŷ = y / Σ y per image."""
    log_q = torch.log(y.clamp(min=EPS)) - torch.log(y.clamp(min=EPS).sum(-1, keepdim=True))
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def gradient_alignment(y: torch.Tensor, log_p: torch.Tensor, sigma: float) -> torch.Tensor:
    """Eq. 7 on a batch's labels y [B, C] given the network's log-softmax log_p: u = S⁻¹(y) moves by
    −ψ(y)·∂KL(ŷ ‖ p)/∂y, and the new labels S(u) are returned."""
    y = y.detach().clone().requires_grad_(True)
    q = y.clamp(min=EPS)
    y_hat = q / q.sum(-1, keepdim=True)
    kl = (y_hat * (torch.log(y_hat) - log_p.detach())).sum(-1).mean()
    (grad,) = torch.autograd.grad(kl, y)
    y = y.detach()
    u = torch.logit(y.clamp(EPS, 1 - EPS)) - gaussian_psi(y, sigma) * grad
    return torch.sigmoid(u).clamp(EPS, 1 - EPS)


def train_cdul_student(images: Dataset, initial_logit: np.ndarray, image_size: int, training: StudentTraining,
                       cdul: CdulTraining, on_step: Callable[[int, float], None] | None = None,
                       checkpointer: Checkpointer | None = None) -> tuple[SmallCNN, np.ndarray]:
    """The small CNN trained by CDUL's procedure on `images` from the initial labels (logits [N, C]); returns it
    (outputs: log-softmax) and the refined labels (probabilities [N, C]). Resumes from `checkpointer`."""
    torch.manual_seed(training.seed)
    gen = torch.Generator().manual_seed(training.seed)
    n, n_cls = initial_logit.shape
    model = SmallCNN(n_cls, training.width, image_size, log_softmax=True)
    opt = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=1e-4, foreach=True)
    labels = torch.sigmoid(torch.tensor(np.asarray(initial_logit), dtype=torch.float32)).clamp(EPS, 1 - EPS)
    state, start, step = restore_training(checkpointer, model, opt, gen)
    if state is not None:
        labels = state["labels"]
    for epoch in range(start, training.epochs):
        model.train()
        for x, idx in DataLoader(IndexedImages(images), batch_size=training.batch_size, shuffle=True, generator=gen):
            log_p = model(x)
            loss = kl_to_labels(log_p, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cdul.updates(epoch):  # after the network's step, as the code does
                labels[idx] = gradient_alignment(labels[idx], log_p, cdul.sigma)
            if on_step is not None:
                on_step(step, loss.item())
            step += 1
        save_training(checkpointer, epoch, training.epochs, step, model, opt, gen, labels=labels.clone())
    model.eval()
    return model, labels.numpy()
