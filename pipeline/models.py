"""One factory for every model the pipeline trains: a config dataclass per kind, `create_model(spec)`,
`save_checkpoint(path, spec, module)` and `load_checkpoint(path)`.

Kinds, as the `kind` key of each checkpoint file (docs/outputs.md):
- `adapter` (AdapterSpec): the sew adapter on the frozen tower its `backbone` descriptor names; the tower's
  weights stay where the descriptor says (data/models/adapter.pt, and ceiling.pt).
- `frozen_tower` (FrozenTowerSpec): the standalone student, the tower's weights and the adapter in one
  file (student.pt with `distill.student: frozen_tower`).
- `small_cnn` (SmallCNNSpec): the small CNN student (student.pt with `distill.student: small_cnn`).
- `none` (NoModel): no model, and why (ceiling.pt of a dataset without ground truth).

A checkpoint is a plain dict of tensors and configs, so torch.load(weights_only=True) reads it; its keys
and their order are part of the file's bytes, which DVC caches, so each spec writes them in one fixed order.
Every module built here takes uint8 images [B, 3, S, S] and returns logits [B, C].
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn

from pipeline import clip
from pipeline.adapter import Adapter, AdapterConfig, FrozenTowerClassifier
from pipeline.settings import Settings, setting
from pipeline.storage import atomic_path
from pipeline.student import SmallCNN


@dataclass(frozen=True)
class AdapterSpec:
    """The adapter over a frozen tower described by `backbone` (pipeline.clip.describe)."""

    adapter: AdapterConfig
    image_size: int
    classes: list[str]
    backbone: dict
    kind: ClassVar[str] = "adapter"
    ADAPTER_WEIGHTS: ClassVar[str] = "state_dict"  # the checkpoint's key of the adapter's weights

    def state(self, module: nn.Module) -> dict:
        adapter = module.adapter if isinstance(module, FrozenTowerClassifier) else module
        return {"kind": self.kind, "adapter_config": self.adapter.to_dict(), "state_dict": adapter.state_dict(),
                "image_size": self.image_size, "classes": self.classes, "backbone": self.backbone}

    @property
    def tower(self) -> tuple[str, int]:
        """(the frozen tower's sha256, its input size): what a stored test grid must be of."""
        return self.backbone["sha256"], self.image_size

    @classmethod
    def parse(cls, ckpt: Mapping) -> AdapterSpec:
        return cls(AdapterConfig.from_dict(ckpt["adapter_config"]), int(ckpt["image_size"]), list(ckpt["classes"]),
                   dict(ckpt["backbone"]))

    def build(self, backbone: nn.Module | None = None) -> FrozenTowerClassifier:
        """Frozen tower + a fresh adapter; the tower is loaded from the descriptor unless given."""
        model = backbone if backbone is not None else clip.load_described(self.backbone)
        return FrozenTowerClassifier(model, Adapter(self.adapter), self.image_size)

    @classmethod
    def load_weights(cls, module: FrozenTowerClassifier, ckpt: Mapping) -> None:
        module.adapter.load_state_dict(ckpt[cls.ADAPTER_WEIGHTS])


@dataclass(frozen=True)
class FrozenTowerSpec:
    """The standalone student: open_clip config `model`'s visual tower (weights in the file) + the adapter."""

    model: str
    backbone_sha256: str
    adapter: AdapterConfig
    image_size: int
    classes: list[str]
    kind: ClassVar[str] = "frozen_tower"
    ADAPTER_WEIGHTS: ClassVar[str] = "adapter_state_dict"

    @classmethod
    def from_adapter(cls, spec: AdapterSpec) -> FrozenTowerSpec:
        return cls(spec.backbone["model"], spec.backbone["sha256"], spec.adapter, spec.image_size, spec.classes)

    def state(self, module: FrozenTowerClassifier) -> dict:
        return self.joined(module.visual.state_dict(), module.adapter.state_dict())

    def joined(self, visual_state: Mapping, adapter_state: Mapping) -> dict:
        return {"kind": self.kind, "model": self.model, "backbone_sha256": self.backbone_sha256,
                "visual_state_dict": visual_state, "adapter_config": self.adapter.to_dict(),
                "adapter_state_dict": adapter_state, "image_size": self.image_size, "classes": self.classes}

    @property
    def tower(self) -> tuple[str, int]:
        return self.backbone_sha256, self.image_size

    @classmethod
    def parse(cls, ckpt: Mapping) -> FrozenTowerSpec:
        return cls(ckpt["model"], ckpt["backbone_sha256"], AdapterConfig.from_dict(ckpt["adapter_config"]),
                   int(ckpt["image_size"]), list(ckpt["classes"]))

    def build(self, backbone: nn.Module | None = None) -> FrozenTowerClassifier:
        model = backbone if backbone is not None else clip.create_model(self.model)
        return FrozenTowerClassifier(model, Adapter(self.adapter), self.image_size)

    @classmethod
    def load_weights(cls, module: FrozenTowerClassifier, ckpt: Mapping) -> None:
        module.visual.load_state_dict(ckpt["visual_state_dict"])
        module.adapter.load_state_dict(ckpt[cls.ADAPTER_WEIGHTS])


@dataclass(frozen=True)
class SmallCNNSpec:
    n_classes: int
    width: int
    image_size: int
    classes: list[str]
    log_softmax: bool = False  # CDUL's student (pipeline.cdul_student)
    kind: ClassVar[str] = "small_cnn"
    tower: ClassVar[None] = None  # no frozen tower

    def state(self, module: SmallCNN) -> dict:
        return {"kind": self.kind, "config": module.config, "state_dict": module.state_dict(),
                "classes": list(self.classes)}

    @classmethod
    def parse(cls, ckpt: Mapping) -> SmallCNNSpec:
        return cls(**ckpt["config"], classes=list(ckpt["classes"]))

    def build(self, backbone: nn.Module | None = None) -> SmallCNN:
        return SmallCNN(self.n_classes, self.width, self.image_size, self.log_softmax)

    @staticmethod
    def load_weights(module: SmallCNN, ckpt: Mapping) -> None:
        module.load_state_dict(ckpt["state_dict"])


@dataclass(frozen=True)
class NoModel:
    reason: str
    kind: ClassVar[str] = "none"

    def state(self, module: None = None) -> dict:
        return {"kind": self.kind, "reason": self.reason}

    @classmethod
    def parse(cls, ckpt: Mapping) -> NoModel:
        return cls(str(ckpt.get("reason", "")))


ModelSpec = AdapterSpec | FrozenTowerSpec | SmallCNNSpec | NoModel
SPECS: dict[str, type] = {s.kind: s for s in (AdapterSpec, FrozenTowerSpec, SmallCNNSpec, NoModel)}
STUDENT_KINDS = ("frozen_tower", "small_cnn", "cdul")  # distill.student


@dataclass(frozen=True)
class DistillSettings(Settings):
    """Section `distill`: the student the pipeline exports (its small CNN's training: `distill.small_cnn`)."""

    student: str = setting("frozen_tower", choices=STUDENT_KINDS)  # the tower + adapter, or a small CNN

    SECTION: ClassVar[str] = "distill"


def create_model(spec: ModelSpec, backbone: nn.Module | None = None) -> nn.Module:
    """An untrained module of the spec's kind (the frozen tower: loaded, or `backbone` when given)."""
    if isinstance(spec, NoModel):
        raise ValueError(f"no model: {spec.reason}")
    return spec.build(backbone)


def save_checkpoint(path: str | Path, spec: ModelSpec, module: nn.Module | None = None) -> None:
    """Write `module`'s weights with its spec, atomically."""
    write_checkpoint(path, spec.state(module))


def write_checkpoint(path: str | Path, ckpt: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def student_of_adapter(path: str | Path) -> dict:
    """The frozen_tower student checkpoint of an adapter checkpoint: its tower's weights joined to the
    adapter's weights as read from the file (so that the student file has the same bytes run after run)."""
    spec, ckpt = read_spec(path)
    if not isinstance(spec, AdapterSpec):
        raise ValueError(f"{path}: expected an adapter checkpoint, got kind {spec.kind!r}")
    return FrozenTowerSpec.from_adapter(spec).joined(tower_state_dict(spec.backbone), ckpt["state_dict"])


def tower_state_dict(descriptor: dict) -> dict[str, torch.Tensor]:
    """`clip.load_described(descriptor).visual.state_dict()`, the same bytes once saved (keys, strides, module
    metadata). The embedded teacher's weights file is our own plain state dict
    (pipeline.toy_teacher.save_embedded_teacher), so its tower is read from it without building the model or
    importing open_clip (~3 s of every `distill`); other weights are loaded into the model."""
    if descriptor.get("pretrained") == "embedded":
        ckpt = torch.load(descriptor["weights"], map_location="cpu", weights_only=True)
        if ckpt.get("model") == descriptor["model"]:  # else open_clip says what does not match
            return submodule_state(ckpt["state_dict"], "visual")
    return clip.load_described(descriptor).visual.state_dict()


def submodule_state(state: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The part of a module's state dict that its submodule `name` gives as its own `state_dict()`: in
    contiguous tensors (a loaded tensor keeps the layout it was saved in: the toy teacher trains channels_last),
    with the submodules' metadata (versions) that load_state_dict reads."""
    prefix = name + "."
    out = OrderedDict((k[len(prefix):], v.new_empty(v.shape).copy_(v)) for k, v in state.items()
                      if k.startswith(prefix))
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = OrderedDict(("" if k == name else k[len(prefix):], v) for k, v in metadata.items()
                                    if k == name or k.startswith(prefix))
    return out


def read_spec(path: str | Path) -> tuple[ModelSpec, dict]:
    """(spec, the checkpoint dict) of a checkpoint file, loaded with weights_only=True."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
    if kind not in SPECS:
        raise ValueError(f"{path}: unknown model kind {kind!r} (expected one of {list(SPECS)})")
    return SPECS[kind].parse(ckpt), ckpt


def module_of(spec: ModelSpec, ckpt: Mapping, backbone: nn.Module | None = None) -> nn.Module:
    """The trained module of a checkpoint read by read_spec, in eval mode (the frozen tower: loaded, or
    `backbone` when given)."""
    module = create_model(spec, backbone)
    spec.load_weights(module, ckpt)
    return module.eval()


def load_adapter(spec: AdapterSpec | FrozenTowerSpec, ckpt: Mapping) -> Adapter:
    """The adapter alone of a frozen-tower checkpoint read by read_spec, in eval mode: what predicts from
    the tower's stored features (pipeline.student.predict_grid), with no tower built or loaded."""
    adapter = Adapter(spec.adapter)
    adapter.load_state_dict(ckpt[spec.ADAPTER_WEIGHTS])
    return adapter.eval()


def load_checkpoint(path: str | Path, backbone: nn.Module | None = None) -> tuple[ModelSpec, nn.Module | None]:
    """(spec, the trained module in eval mode; None for kind `none`) of a checkpoint file."""
    spec, ckpt = read_spec(path)
    return spec, None if isinstance(spec, NoModel) else module_of(spec, ckpt, backbone)


def read_student_spec(path: str | Path) -> tuple[FrozenTowerSpec | SmallCNNSpec, dict]:
    """(spec, the checkpoint dict) of a student.pt file, whose kind must be a student's."""
    spec, ckpt = read_spec(path)
    if spec.kind not in STUDENT_KINDS:
        raise ValueError(f"{path}: unknown student kind {spec.kind!r} (expected one of {STUDENT_KINDS})")
    return spec, ckpt


def load_student_spec(path: str | Path) -> tuple[FrozenTowerSpec | SmallCNNSpec, nn.Module]:
    """(spec, module taking uint8 images) from a student.pt file."""
    spec, ckpt = read_student_spec(path)
    return spec, module_of(spec, ckpt)


def load_student(path: str | Path) -> tuple[nn.Module, list[str], int]:
    """(module taking uint8 images, class names, input size) from a student.pt file."""
    spec, module = load_student_spec(path)
    return module, spec.classes, spec.image_size
