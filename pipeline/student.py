"""The small CNN student and prediction with any student.

`small_cnn`: a small CNN trained from scratch on the refined labels with CDUL's consistency term
(predictions on an image and on its augmented view should agree). The default student, `frozen_tower`,
is the sew adapter on its frozen tower (pipeline.adapter). Their checkpoints: pipeline.models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import zarr
from torch.utils.data import DataLoader, Dataset

from pipeline.adapter import SharedTowerClassifiers, same_tower
from pipeline.features import BATCH, CHUNK
from pipeline.images import ImageDecodeError, ResizedOrFaulty
from pipeline.resume import Checkpointer
from pipeline.rules import NO_RULE, Rule, training_loss, update_pseudo_labels
from pipeline.settings import Settings, setting


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks, global average pooling, a linear classifier. Input uint8 [B, 3, S, S].
    `log_softmax`: the outputs are log-probabilities over the classes (CDUL's student predicts with a softmax;
    a per-class score monotone in its probability, as mAP needs)."""

    def __init__(self, n_classes: int, width: int = 32, image_size: int = 64, log_softmax: bool = False):
        super().__init__()
        self.config = {"n_classes": n_classes, "width": width, "image_size": image_size,
                       **({"log_softmax": True} if log_softmax else {})}  # absent: the checkpoints before it
        self.image_size = image_size
        self.log_softmax = log_softmax
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        blocks = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            blocks += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(chans[-1], n_classes)

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(images_u8))

    def embed(self, images_u8: torch.Tensor) -> torch.Tensor:
        """The pooled conv features [B, 4·width]: the image representation the classifier reads."""
        return self.features(images_u8.float() / 127.5 - 1.0).mean((2, 3))

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        out = self.head(embeddings)
        return F.log_softmax(out, dim=-1) if self.log_softmax else out


@dataclass(frozen=True)
class StudentTraining(Settings):
    """Section `distill.small_cnn`."""

    epochs: int = setting(15, ge=1)
    batch_size: int = setting(64, ge=2)
    lr: float = setting(2e-3, ge=0.0)
    consistency: float = setting(1.0, ge=0.0)  # weight of CDUL's consistency term
    width: int = setting(32, ge=1)
    seed: int = setting(0)
    image_size: int = setting(64, ge=8)  # the student's input side (px)

    SECTION: ClassVar[str] = "distill.small_cnn"


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random horizontal flip and a random shift by up to 1/8 of the side (reflect-padded)."""
    b, _, s, _ = images.shape
    x = images.float()
    flip = torch.rand(b, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    pad = max(1, s // 8)
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
    return x[:, :, dy:dy + s, dx:dx + s]


class IndexedImages(Dataset):
    """(image, its index) of a dataset of (path, image) items: a training loop's batches name their rows."""

    def __init__(self, images: Dataset):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        _, img = self.images[i]
        return img, i


def restore_training(checkpointer: Checkpointer | None, model: nn.Module, opt: torch.optim.Optimizer,
                     gen: torch.Generator) -> tuple[dict | None, int, int]:
    """Load a small-CNN training loop's last checkpoint into the model, the optimizer, the shuffling generator
    and torch's RNG: (the checkpoint, for the loop's own state, or None; the epoch to start from; the steps
    done)."""
    state = checkpointer.restore() if checkpointer is not None else None
    if state is None:
        return None, 0, 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state, state["position"], state["step"]


def save_training(checkpointer: Checkpointer | None, epoch: int, epochs: int, step: int, model: nn.Module,
                  opt: torch.optim.Optimizer, gen: torch.Generator, **extra: torch.Tensor) -> None:
    """Checkpoint a small-CNN training loop after `epoch` (not after the last), with the loop's `extra` state."""
    if checkpointer is not None and checkpointer.due(epoch) and epoch + 1 < epochs:
        checkpointer.save({"position": epoch + 1, "step": step, "model": model.state_dict(),
                           "optimizer": opt.state_dict(), **extra, "generator": gen.get_state(),
                           "torch_rng": torch.get_rng_state()})


def train_small_cnn(images: Dataset, targets_logit: np.ndarray, image_size: int, training: StudentTraining,
                    on_step: Callable[[int, float], None] | None = None, known: np.ndarray | None = None,
                    rule: Rule = NO_RULE, weights: np.ndarray | None = None,
                    checkpointer: Checkpointer | None = None) -> SmallCNN:
    """BCE to σ(refined labels) + λ · MSE between σ(f(x)) and σ(f(aug(x))) (CDUL consistency).

    With partial labels, `known` entries keep their labels; a `rule` (pipeline.rules) weights the BCE
    (large_loss), adds a loss on the pooled features (label_distribution, its distributions `weights`) or
    moves the other labels after each epoch (plmcl, g2netpl) towards the predictions made on them during that
    epoch. A `checkpointer` saves the state after each epoch; a rerun resumes from the last one.
    """
    torch.manual_seed(training.seed)
    gen = torch.Generator().manual_seed(training.seed)
    n, n_cls = targets_logit.shape
    model = SmallCNN(n_cls, training.width, image_size)
    opt = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=1e-4, foreach=True)
    targets = torch.sigmoid(torch.tensor(np.asarray(targets_logit), dtype=torch.float32))
    known_t = torch.zeros((n, n_cls), dtype=torch.bool) if known is None else torch.tensor(np.asarray(known, bool))
    w_all = None if weights is None else torch.tensor(np.asarray(weights), dtype=torch.float32)
    y_prev = targets.numpy().astype(np.float64)
    state, start, step = restore_training(checkpointer, model, opt, gen)
    if state is not None:
        targets, y_prev = state["targets"], state["y_prev"].numpy()
    for epoch in range(start, training.epochs):
        model.train()
        seen = np.zeros((n, n_cls)) if rule.UPDATES_LABELS else None
        for x, idx in DataLoader(IndexedImages(images), batch_size=training.batch_size, shuffle=True, generator=gen):
            embeddings = model.embed(augment(x, gen))
            logits = model.classify(embeddings)
            loss = training_loss(logits, embeddings, targets[idx], known_t[idx], rule, epoch,
                                 None if w_all is None else w_all[idx])
            if training.consistency > 0:
                other = model(augment(x, gen))
                loss = loss + training.consistency * F.mse_loss(torch.sigmoid(logits), torch.sigmoid(other))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if seen is not None:
                seen[idx.numpy()] = torch.sigmoid(logits).detach().numpy()
            if on_step is not None:
                on_step(step, loss.item())
            step += 1
        if rule.UPDATES_LABELS:
            y = targets.numpy().astype(np.float64)
            new = update_pseudo_labels(y, y_prev, seen, known_t.numpy(), rule)
            y_prev = y
            targets = torch.tensor(new, dtype=torch.float32)
        save_training(checkpointer, epoch, training.epochs, step, model, opt, gen, targets=targets,
                      y_prev=torch.from_numpy(y_prev))
    return model.eval()


@dataclass(frozen=True)
class Unreadable:
    """A file `predict_files` could not decode: its index in the paths, IMAGE_FAULTS kind and message."""

    index: int
    kind: str
    detail: str


@torch.inference_mode()
def predict_files(module: nn.Module, image_size: int, paths: Sequence, batch_size: int = BATCH, num_workers: int = 0,
                  on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, list[Unreadable]]:
    """(logits [n_decoded, C], indices of the decoded paths, the files that could not be decoded).

    Files are decoded in batches; an undecodable one is left out and returned, never raised."""
    if not len(paths):
        raise ValueError("no images to predict")
    module.eval()
    loader = DataLoader(ResizedOrFaulty(paths, image_size), batch_size=batch_size, num_workers=num_workers)
    out, decoded, unreadable = [], [], []
    for index, images, kinds, details in loader:
        ok = torch.tensor([not k for k in kinds], dtype=torch.bool)
        unreadable += [Unreadable(int(i), k, d) for i, k, d in zip(index, kinds, details, strict=True) if k]
        if ok.any():
            out.append(module(images[ok]).float().numpy())
            decoded.append(index[ok].numpy())
        if on_batch is not None:
            on_batch(len(images))
    n_classes = module(torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)).shape[1] if not out else 0
    logits = np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)
    return logits, np.concatenate(decoded) if decoded else np.zeros(0, np.int64), unreadable


def predict_paths(module: nn.Module, image_size: int, paths: Sequence, batch_size: int = BATCH, num_workers: int = 0,
                  on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Logits [len(paths), C] of a module taking uint8 images; every file must decode (ImageDecodeError)."""
    logits, _, unreadable = predict_files(module, image_size, paths, batch_size, num_workers, on_batch)
    if unreadable:
        raise ImageDecodeError(unreadable[0].detail, unreadable[0].kind)
    return logits


@torch.inference_mode()
def predict_grid(adapters: Mapping[str, nn.Module], grid: np.ndarray | zarr.Array) -> dict[str, np.ndarray]:
    """Logits [N, C] of each adapter over stored tower grids [N, D, G, G] (pipeline.features.read_test_grid),
    read a stored chunk at a time, in the tower path's batches: the logits of its FrozenTowerClassifier over
    the images, to the bit."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in adapters}
    for chunk_start in range(0, grid.shape[0], CHUNK):
        chunk = np.asarray(grid[chunk_start:chunk_start + CHUNK])
        for start in range(0, len(chunk), BATCH):
            features = torch.from_numpy(np.ascontiguousarray(chunk[start:start + BATCH]))
            for name, adapter in adapters.items():
                out[name].append(adapter.eval()(features).float().numpy())
    return {name: np.concatenate(logits) for name, logits in out.items()}


def predict_models(models: Mapping[str, tuple[nn.Module, int]], paths: Sequence) -> dict[str, np.ndarray]:
    """predict_paths of each (module, image size); frozen-tower classifiers with the same tower at the same size
    share one tower pass per batch (pipeline.adapter.SharedTowerClassifiers): the same logits, fewer forwards."""
    out: dict[str, np.ndarray] = {}
    pending = dict(models)
    while pending:
        first, (module, size) = next(iter(pending.items()))
        group = [first] + [n for n, (m, s) in pending.items() if n != first and s == size and same_tower(module, m)]
        if len(group) == 1:
            out[first] = predict_paths(module, size, paths)
        else:
            logits = predict_paths(SharedTowerClassifiers([pending[n][0] for n in group]), size, paths)
            splits = np.cumsum([pending[n][0].adapter.cfg.n_classes for n in group])[:-1]
            out.update(zip(group, np.split(logits, splits, axis=1), strict=True))
        for name in group:
            del pending[name]
    return {name: out[name] for name in models}
