"""Light heads trained on cached teacher embeddings: the EM estimator of TailorCLIP §3.5 with a linear
head, and plain soft-label distillation. Both run in seconds on cached `image_emb`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class HeadTraining:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-2
    estimator_lr: float = 1e-2  # EM only: learning rate of the label estimator Z
    weight_decay: float = 1e-4
    seed: int = 0


def _batches(n: int, batch: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    return [perm[i:i + batch] for i in range(0, n, batch)]


def train_em_head(features: np.ndarray, z_init: np.ndarray, training: HeadTraining,
                  frozen: np.ndarray | None = None) -> tuple[torch.nn.Linear, np.ndarray]:
    """Jointly fit a linear head p = Wx + b and the label estimator Z (initialised from z_init).

    M-step: BCE(p, stop σ(z)); E-step: BCE(z, stop σ(p)). Entries where `frozen` is True (known labels)
    keep their initial value. Returns the head and the refined Z.
    """
    torch.manual_seed(training.seed)
    gen = torch.Generator().manual_seed(training.seed)
    x = torch.tensor(np.asarray(features), dtype=torch.float32)
    z0 = torch.tensor(np.asarray(z_init), dtype=torch.float32)
    z = torch.nn.Parameter(z0.clone())
    keep = torch.zeros_like(z0, dtype=torch.bool)
    if frozen is not None:
        keep = torch.tensor(np.asarray(frozen), dtype=torch.bool)
    head = torch.nn.Linear(x.shape[1], z0.shape[1])
    opt = torch.optim.AdamW([{"params": head.parameters(), "lr": training.lr, "weight_decay": training.weight_decay},
                             {"params": [z], "lr": training.estimator_lr, "weight_decay": 0.0}])
    for _ in range(training.epochs):
        for idx in _batches(len(x), training.batch_size, gen):
            p = head(x[idx])
            zb = torch.where(keep[idx], z0[idx], z[idx])
            m_loss = F.binary_cross_entropy_with_logits(p, torch.sigmoid(zb).detach())
            e_loss = F.binary_cross_entropy_with_logits(zb, torch.sigmoid(p).detach())
            opt.zero_grad(set_to_none=True)
            (m_loss + e_loss).backward()
            opt.step()
    refined = torch.where(keep, z0, z.detach())
    return head.eval(), refined.numpy().astype(np.float32)


def train_soft_head(features: np.ndarray, targets_logit: np.ndarray, training: HeadTraining) -> torch.nn.Linear:
    """Fit a linear head to soft targets σ(targets_logit) with BCE."""
    head, _ = train_em_head(features, targets_logit, HeadTraining(
        epochs=training.epochs, batch_size=training.batch_size, lr=training.lr, estimator_lr=0.0,
        weight_decay=training.weight_decay, seed=training.seed))
    return head


@torch.inference_mode()
def predict_head(head: torch.nn.Linear, features: np.ndarray) -> np.ndarray:
    return head(torch.as_tensor(features, dtype=torch.float32)).numpy()
