"""The adapter of TailorCLIP §3.4 on the frozen visual tower's grid features, and the exported student.

grid features F [B, D, H, W] → bottleneck f_b with residual mix → 1×1 projection + BN → positional
embeddings → Transformer decoder with one learnable query per class → per-query linear (the diagonal
of a full linear layer) → logits [B, C].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline import clip
from pipeline.settings import Settings, setting


@dataclass(frozen=True)
class AdapterConfig:
    in_dim: int
    n_classes: int
    grid: tuple[int, int]
    hidden: int = 128
    reduction: int = 4  # bottleneck width = in_dim / reduction
    residual: float = 0.2  # share of the bottleneck output in the mix with the frozen features
    layers: int = 1
    heads: int = 4
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return {**asdict(self), "grid": list(self.grid)}

    @classmethod
    def from_dict(cls, d: dict) -> AdapterConfig:
        return cls(**{**d, "grid": tuple(d["grid"])})


@dataclass(frozen=True)
class AdapterOptions(Settings):
    """Section `sew.adapter`: the adapter's size; the rest of pipeline.adapter.AdapterConfig follows the tower."""

    hidden: int = setting(128, ge=1)
    layers: int = setting(1, ge=1)
    heads: int = setting(4, ge=1)
    residual: float = setting(0.2, ge=0.0, le=1.0)  # share of the bottleneck output in the residual mix

    SECTION: ClassVar[str] = "sew.adapter"


class Adapter(nn.Module):
    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        self.cfg = cfg
        mid = max(1, cfg.in_dim // cfg.reduction)
        self.bottleneck = nn.Sequential(nn.Conv2d(cfg.in_dim, mid, 1, bias=False), nn.ReLU(inplace=True),
                                        nn.Conv2d(mid, cfg.in_dim, 1, bias=False), nn.ReLU(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(cfg.in_dim, cfg.hidden, 1, bias=False), nn.BatchNorm2d(cfg.hidden))
        n_tokens = cfg.grid[0] * cfg.grid[1]
        self.pos = nn.Parameter(torch.randn(1, n_tokens, cfg.hidden) * 0.02)
        layer = nn.TransformerDecoderLayer(cfg.hidden, cfg.heads, 4 * cfg.hidden, cfg.dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.layers)
        self.queries = nn.Parameter(torch.randn(cfg.n_classes, cfg.hidden) * 0.02)
        # Per-query linear: class c's logit reads only query c's output (the diagonal of a C×C linear map).
        self.fc_weight = nn.Parameter(torch.randn(cfg.n_classes, cfg.hidden) * cfg.hidden ** -0.5)
        self.fc_bias = nn.Parameter(torch.zeros(cfg.n_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.class_features(features))

    def class_features(self, features: torch.Tensor) -> torch.Tensor:
        """The decoder's output for every class query: category-specific features [B, C, hidden] (HST's f_c)."""
        return self.decode(self.tokens(features))

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """The grid's cells projected for the decoder, before positions: [B, HW, hidden]."""
        r = self.cfg.residual
        tokens = features.flatten(2).transpose(1, 2)  # [B, HW, D]
        if tokens.shape[1] != self.pos.shape[1]:
            raise ValueError(f"adapter expects a {self.cfg.grid} feature grid, got {tokens.shape[1]} tokens")
        # The 1×1 convolutions as matrix products over tokens: the same maps, without the convolution
        # kernels' overhead (the parameters keep their conv shapes, so checkpoints are unchanged).
        down, up = self.bottleneck[0].weight.flatten(1), self.bottleneck[2].weight.flatten(1)
        x = r * F.relu(F.linear(F.relu(F.linear(tokens, down)), up)) + (1 - r) * tokens
        x = F.linear(x, self.project[0].weight.flatten(1))
        # BatchNorm over batch and cells, as in the 2-D layout → [B, HW, hidden]
        return self.project[1](x.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class features [B, C, hidden]: every class query attends over the tokens (with positions)."""
        queries = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.decoder(queries, tokens + self.pos)

    def head(self, class_features: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] from the class features: class c reads only its own."""
        return (class_features * self.fc_weight).sum(-1) + self.fc_bias


def adapter_for(model: nn.Module, n_classes: int, image_size: int, **overrides) -> Adapter:
    """An adapter sized for `model`'s visual tower fed image_size² inputs (probed with one dummy image).

    The tower sees images at `image_size`, which may exceed its pretraining size (TailorCLIP feeds
    448 px to CLIP's 224 px towers): a finer feature grid keeps small objects visible.
    """
    size = image_size
    try:
        with torch.inference_mode():
            f = clip.grid_features(model.visual, torch.zeros(1, 3, size, size))
    except RuntimeError as e:  # ViT towers have a fixed positional embedding
        raise ValueError(f"the visual tower cannot take {size} px inputs (native size "
                         f"{clip.image_size_of(model)} px); set sew.image_size accordingly") from e
    return adapter_for_grid(f.shape, n_classes, **overrides)


def adapter_for_grid(shape: tuple[int, ...], n_classes: int, **overrides) -> Adapter:
    """An adapter for grid features of shape [..., D, H, W] (a probe's, or a feature store's)."""
    *_, dim, rows, cols = shape
    return Adapter(AdapterConfig(in_dim=dim, n_classes=n_classes, grid=(rows, cols), **overrides))


class FrozenTowerClassifier(nn.Module):
    """The standalone student: the teacher's frozen visual tower + the trained adapter, one module.

    Input: uint8 images [B, 3, S, S] with S = image_size; output: logits [B, C].
    """

    def __init__(self, model: nn.Module, adapter: Adapter, image_size: int):
        super().__init__()
        self.visual = model.visual
        self.adapter = adapter
        mean, std = clip.normalizer_of(model)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.image_size = image_size

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self.adapter(clip.grid_features(self.visual, clip.normalize_u8(images_u8, self.mean, self.std)))


def same_tower(a: nn.Module, b: nn.Module) -> bool:
    """Whether two frozen-tower classifiers run the same tower (weights and normalisation) at the same size."""
    if not (isinstance(a, FrozenTowerClassifier) and isinstance(b, FrozenTowerClassifier)):
        return False
    if a is b or a.visual is b.visual:
        return a.image_size == b.image_size
    sa, sb = a.visual.state_dict(), b.visual.state_dict()
    return (a.image_size == b.image_size and sa.keys() == sb.keys() and torch.equal(a.mean, b.mean)
            and torch.equal(a.std, b.std) and all(torch.equal(sa[k], sb[k]) for k in sa))


class SharedTowerClassifiers(nn.Module):
    """Several frozen-tower classifiers over one tower: one tower pass, each adapter's logits side by side
    [B, ΣC] (`evaluate` predicts the student and the ceiling at the cost of one)."""

    def __init__(self, classifiers: list[FrozenTowerClassifier]):
        super().__init__()
        base = classifiers[0]
        self.visual, self.image_size = base.visual, base.image_size
        self.register_buffer("mean", base.mean)
        self.register_buffer("std", base.std)
        self.adapters = nn.ModuleList(c.adapter for c in classifiers)

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        features = clip.grid_features(self.visual, clip.normalize_u8(images_u8, self.mean, self.std))
        return torch.cat([adapter(features) for adapter in self.adapters], dim=1)
