"""The sew stage (TailorCLIP §3.3.2, §3.5, Algorithm 1): multi-object composites and EM refinement.

Overlay pool: the top-k train images of every class by z⁰ (deduplicated): z⁰ keeps CLIP's saliency,
so each is a confident picture of one object. Every training image becomes a composite with n
overlays (n geometric with p, at most L) pasted at seeded random positions, each resized to keep its
aspect inside a box of side q/√n of the host. The composite's label is the element-wise max of its
sources' labels, taken from the learnable estimator Z, so the E-step gradient of each class flows to
the source most likely to contain it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pipeline import clip
from pipeline.images import decode_image, resize_u8
from pipeline.resume import Checkpointer
from pipeline.rules import NO_RULE, RuleSettings, rule_loss, update_pseudo_labels


@dataclass(frozen=True)
class SewSettings:
    p: float = 0.5  # probability of one more overlay
    q: float = 0.5  # overlay box side as a fraction of the host side, shared among n overlays (q/√n)
    max_overlays: int = 3  # L; 0 disables sewing
    pool_k: int = 200  # top-k images per class by z⁰ in the overlay pool
    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-3  # adapter
    estimator_lr: float = 1e-2  # Z
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.p < 1:
            raise ValueError(f"sew.p must be in [0, 1), got {self.p}")
        if not 0 < self.q <= 1:
            raise ValueError(f"sew.q must be in (0, 1], got {self.q}")
        if self.max_overlays < 0 or self.pool_k < 1:
            raise ValueError("sew.L must be >= 0 and sew.k >= 1")


def overlay_pool(z0: np.ndarray, k: int) -> np.ndarray:
    """Sorted, deduplicated indices of the top-k rows of every column of z0 [N, C]."""
    k = min(k, z0.shape[0])
    top = np.argsort(-z0, axis=0, kind="stable")[:k]
    return np.unique(top)


def overlay_count(rng: np.random.Generator, p: float, max_overlays: int) -> int:
    """n ~ geometric: one more overlay with probability p each time, capped at L."""
    n = 0
    while n < max_overlays and rng.random() < p:
        n += 1
    return n


def paste_size(h: int, w: int, host: int, q: float, n: int) -> tuple[int, int]:
    """Size of an h×w overlay resized to fit, aspect kept, in a square of side q/√n × host."""
    side = q / math.sqrt(n) * host
    scale = side / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def sew(host: torch.Tensor, overlays: Sequence[torch.Tensor], rng: np.random.Generator, q: float) -> torch.Tensor:
    """Paste each overlay (uint8 [3, h, w]) onto a copy of host (uint8 [3, S, S]) at a random position."""
    out = host.clone()
    size = host.shape[-1]
    for ov in overlays:
        h, w = paste_size(ov.shape[-2], ov.shape[-1], size, q, len(overlays))
        small = F.interpolate(ov.unsqueeze(0).float(), size=(h, w), mode="bilinear", antialias=True,
                              align_corners=False).squeeze(0).round().clamp(0, 255).to(torch.uint8)
        y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        out[:, y:y + h, x:x + w] = small
    return out


def composite_logits(z: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Element-wise max of the sources' logits. z [N, C]; sources [B, S] of row indices, -1 = none."""
    return max_over_sources(z[sources.clamp(min=0)], sources)


def max_over_sources(rows: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """rows [B, S, C] already gathered for `sources` [B, S]; the max over the valid (≥ 0) sources."""
    return rows.masked_fill((sources < 0).unsqueeze(-1), float("-inf")).max(dim=1).values


class SewDataset(Dataset):
    """Item i: (composite uint8 [3, S, S], sources [1+L]) for train image i, seeded by (seed, epoch, i)."""

    def __init__(self, paths: Sequence[str | Path], size: int, pool: np.ndarray, settings: SewSettings):
        self.paths, self.size, self.pool, self.settings = list(paths), size, pool, settings
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> torch.Tensor:
        return resize_u8(decode_image(self.paths[i]), self.size)

    def __getitem__(self, i: int):
        s = self.settings
        rng = np.random.default_rng(np.random.SeedSequence([s.seed, self.epoch, i]))
        n = overlay_count(rng, s.p, s.max_overlays)
        picks = [int(j) for j in rng.choice(self.pool, size=n, replace=True)] if n and len(self.pool) else []
        image = sew(self.load(i), [self.load(j) for j in picks], rng, s.q) if picks else self.load(i)
        sources = torch.full((1 + s.max_overlays,), -1, dtype=torch.long)
        sources[: 1 + len(picks)] = torch.tensor([i, *picks])
        return image, sources


def predict_hosts(visual: torch.nn.Module, normalizer: tuple[torch.Tensor, torch.Tensor], adapter: torch.nn.Module,
                  dataset: SewDataset, batch_size: int) -> np.ndarray:
    """σ(adapter) on every training image as it is, without overlays. [N, C]"""
    mean, std = normalizer
    adapter.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            images = torch.stack([dataset.load(i) for i in range(start, min(start + batch_size, len(dataset)))])
            out.append(torch.sigmoid(adapter(clip.grid_features(visual, clip.normalize_u8(images, mean, std)))))
    return torch.cat(out).numpy()


def train_adapter_em(visual: torch.nn.Module, normalizer: tuple[torch.Tensor, torch.Tensor],
                     adapter: torch.nn.Module, dataset: SewDataset, z_init: np.ndarray, frozen: np.ndarray,
                     settings: SewSettings, num_workers: int = 0,
                     on_step: Callable[[int, int, float], None] | None = None,
                     rule: RuleSettings = NO_RULE, weights: np.ndarray | None = None,
                     checkpointer: Checkpointer | None = None) -> np.ndarray:
    """Train `adapter` on composites and the estimator Z jointly (Algorithm 1); returns refined Z.

    M-step: BCE(p, stop σ(z_s)) trains the adapter; E-step: BCE(z_s, stop σ(p)) moves Z, with z_s
    the composite label from Z. Entries where `frozen` is True (known labels) keep z_init. The visual
    tower stays frozen; with estimator_lr 0 this is plain distillation of fixed composite labels.
    A partial-label `rule` (pipeline.rules) weights the M-step; `plmcl` and `g2netpl` replace the
    E-step by their own label update after each epoch, on predictions for the images without overlays.
    `weights` [N, C] (label_distribution) weight a composite's entries by the max over its sources.
    A `checkpointer` saves the state after each epoch; a rerun resumes from the last one.
    """
    torch.manual_seed(settings.seed)
    z0 = torch.tensor(np.asarray(z_init), dtype=torch.float32)
    keep = torch.tensor(np.asarray(frozen), dtype=torch.bool)
    z = torch.nn.Parameter(z0.clone())
    w_all = None if weights is None else torch.tensor(np.asarray(weights), dtype=torch.float32)
    opt = torch.optim.AdamW([
        {"params": adapter.parameters(), "lr": settings.lr, "weight_decay": settings.weight_decay},
        {"params": [z], "lr": settings.estimator_lr, "weight_decay": 0.0}])
    mean, std = normalizer
    visual.eval()
    y_prev = torch.sigmoid(z0).numpy().astype(np.float64)
    start = 0
    state = checkpointer.restore() if checkpointer is not None else None
    if state is not None:
        adapter.load_state_dict(state["adapter"])
        opt.load_state_dict(state["optimizer"])
        with torch.no_grad():
            z.copy_(state["z"])
        y_prev = state["y_prev"].numpy()
        torch.set_rng_state(state["torch_rng"])
        start = state["position"]
    for epoch in range(start, settings.epochs):
        dataset.epoch = epoch
        order = torch.Generator().manual_seed(settings.seed * 1000 + epoch)
        loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, generator=order,
                            num_workers=num_workers, drop_last=len(dataset) > settings.batch_size)
        adapter.train()
        for step, (images, sources) in enumerate(loader):
            with torch.no_grad():
                feats = clip.grid_features(visual, clip.normalize_u8(images, mean, std))
            p = adapter(feats)
            rows = sources.clamp(min=0)  # gather the batch's rows first: never touch all N × C per step
            zs = max_over_sources(torch.where(keep[rows], z0[rows], z[rows]), sources)
            w = None if w_all is None else composite_logits(w_all, sources)
            m_loss = rule_loss(p, torch.sigmoid(zs).detach(), keep[sources[:, 0]], rule, epoch, w)
            loss = m_loss
            if not rule.updates_labels:
                loss = loss + F.binary_cross_entropy_with_logits(zs, torch.sigmoid(p).detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step(epoch, step, m_loss.item())
        if rule.updates_labels:
            y = torch.sigmoid(z.detach()).numpy().astype(np.float64)
            predictions = predict_hosts(visual, normalizer, adapter, dataset, settings.batch_size)
            new = update_pseudo_labels(y, y_prev, predictions, keep.numpy(), rule)
            y_prev = y
            with torch.no_grad():
                z.copy_(torch.logit(torch.tensor(new, dtype=torch.float32)))
        if checkpointer is not None and checkpointer.due(epoch) and epoch + 1 < settings.epochs:
            checkpointer.save({"position": epoch + 1, "adapter": adapter.state_dict(), "optimizer": opt.state_dict(),
                               "z": z.detach().clone(), "y_prev": torch.from_numpy(y_prev),
                               "torch_rng": torch.get_rng_state()})
    adapter.eval()
    return torch.where(keep, z0, z.detach()).numpy().astype(np.float32)
