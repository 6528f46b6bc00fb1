"""Settings as typed dataclasses, each the one definition of its params section: a field per key, its
type, default, and range or choices in the field's metadata (`setting(...)`). `stages.common.Params.build`
reads a section into one, reporting every bad or unknown key at once; constructing one directly checks
the same metadata (`Settings.__post_init__`), so a library caller meets the same rules as a params file.

Here: the settings more than one stage reads, kept free of torch so that reading params stays cheap:
the composites and EM (`sew`, read by the sew and ceiling stages), the adapter's size (`sew.adapter`), and
the partial-label training rule (`rule` and its section, read by sew and distill).
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar


def setting(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, choices: tuple | None = None, auto: bool = False) -> Any:
    """A settings field: its default and what values it takes (bounds, choices; `auto`: the params
    value `auto` stands for None)."""
    meta = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}.items() if v is not None}
    if auto:
        meta["auto"] = True
    return field(default=default, metadata=meta)


def allowed_text(meta: typing.Mapping) -> str:
    """`in [0, 1)`, `>= 1`, `one of ['a', 'b']`: what a field's metadata allows, for error messages."""
    if "choices" in meta:
        return f"one of {list(meta['choices'])}"
    lo = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    hi = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    return f"{'<=' if hi[0] == ']' else '<'} {hi[1]}" if hi else "anything"


def value_ok(meta: typing.Mapping, value: Any) -> bool:
    if value is None and meta.get("auto"):
        return True
    if "choices" in meta:
        return value in meta["choices"]
    return not (("ge" in meta and value < meta["ge"]) or ("gt" in meta and value <= meta["gt"])
                or ("le" in meta and value > meta["le"]) or ("lt" in meta and value >= meta["lt"]))


def field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """The plain types each field of `cls` takes (None left out: only `auto` fields take it)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
        out[f.name] = tuple(a for a in args if a is not type(None)) or (hint,)
    return out


@dataclass(frozen=True)
class Settings:
    """Base of every settings dataclass: checks each field against its metadata on construction, then
    the relations between fields (`relation_errors`)."""

    SECTION: ClassVar[str] = ""  # the params section, for messages
    DEPRECATED: ClassVar[dict[str, str]] = {}  # old params key → field name, still read with a warning

    def __post_init__(self) -> None:
        errors = [f"{self.key(f.name)} must be {allowed_text(f.metadata)}, got {getattr(self, f.name)!r}"
                  for f in fields(self) if not value_ok(f.metadata, getattr(self, f.name))]
        if not errors:
            errors = self.relation_errors()
        if errors:
            raise ValueError("; ".join(errors))

    @classmethod
    def key(cls, name: str) -> str:
        return f"{cls.SECTION}.{name}" if cls.SECTION else name

    def relation_errors(self) -> list[str]:
        return []


RULES = ("none", "plmcl", "g2netpl", "large_loss", "label_distribution")
OVERLAY_LABELS = ("pooled", "all")
PASTES = ("feather", "rectangle")
E_STEPS = ("predictions", "backprop")


@dataclass(frozen=True)
class RuleSettings(Settings):
    """The partial-label training rule: top-level `rule`, with the constants of the rule's own section."""

    name: str = setting("none", choices=RULES)
    plmcl_eta: float = setting(0.5, ge=0.0, le=1.0)  # pull towards the prediction
    plmcl_alpha: float = setting(0.9, ge=0.0, le=1.0)  # momentum
    plmcl_beta: float = setting(0.5, ge=0.0, le=1.0)  # velocity damping
    g2netpl_eta: float = setting(2.0, ge=0.0)  # KL penalty weight (> 1 sharpens, ≤ 1 lets entropy win)
    g2netpl_lr: float = setting(0.05, ge=0.0)
    g2netpl_steps: int = setting(10, ge=0)
    ll_delta: float = setting(0.1, ge=0.0, le=100.0)  # % of the batch's entries rejected more per epoch
    ll_max_rate: float = setting(0.5, ge=0.0, le=1.0)
    ld_sigma: float = setting(0.1, ge=1e-6)  # RBF width on cosine distance

    # read from several sections: field → params key
    PARAMS_KEYS: ClassVar[dict[str, str]] = {
        "name": "rule", "plmcl_eta": "plmcl.eta", "plmcl_alpha": "plmcl.alpha", "plmcl_beta": "plmcl.beta",
        "g2netpl_eta": "g2netpl.eta", "g2netpl_lr": "g2netpl.lr", "g2netpl_steps": "g2netpl.steps",
        "ll_delta": "large_loss.delta", "ll_max_rate": "large_loss.max_rate", "ld_sigma": "label_distribution.sigma"}

    @classmethod
    def key(cls, name: str) -> str:
        return cls.PARAMS_KEYS.get(name, name)

    @property
    def updates_labels(self) -> bool:
        return self.name in ("plmcl", "g2netpl")


NO_RULE = RuleSettings()


@dataclass(frozen=True)
class SewSettings(Settings):
    """Section `sew`: the composites (TailorCLIP Algorithm 1) and the EM."""

    overlay_prob: float = setting(0.5, ge=0.0, lt=1.0)  # p: probability of one more overlay (n is geometric)
    overlay_side: float = setting(0.5, gt=0.0, le=1.0)  # q: overlays fit in a box of side q/√n of the host
    max_overlays: int = setting(3, ge=0)  # L; 0 disables sewing
    pool_k: int | None = setting(None, ge=1, auto=True)  # top-k images per class by z⁰; auto (None): pool_share
    pool_share: float = setting(0.25, gt=0.0, le=1.0)  # k = ⌈share · N / C⌉
    overlay_label: str = setting("pooled", choices=OVERLAY_LABELS)
    paste: str = setting("feather", choices=PASTES)
    placement_tries: int = setting(8, ge=1)  # random positions tried per overlay; the least covering one is taken
    cover_limit: float = setting(0.5, gt=0.0, le=1.0)  # a host label whose view is covered beyond this is ignored
    e_step: str = setting("predictions", choices=E_STEPS)
    e_weight: float = setting(0.5, ge=0.0, le=1.0)  # predictions: weight of the adapter's logits in the E-step
    e_rounds: int = setting(1, ge=1)  # predictions: E-steps, evenly spaced over the epochs (the last after the last)
    epochs: int = setting(8, ge=1)
    batch_size: int = setting(32, ge=2)
    lr: float = setting(1e-3, ge=0.0)  # adapter
    estimator_lr: float = setting(1e-2, ge=0.0)  # Z, backprop E-step only
    weight_decay: float = setting(1e-4, ge=0.0)
    seed: int = setting(0)

    SECTION: ClassVar[str] = "sew"
    DEPRECATED: ClassVar[dict[str, str]] = {"p": "overlay_prob", "q": "overlay_side", "L": "max_overlays",
                                            "k": "pool_k"}

    def relation_errors(self) -> list[str]:
        if self.e_rounds > self.epochs:
            return [f"sew.e_rounds must be in [1, sew.epochs], got {self.e_rounds}"]
        return []

    @property
    def e_step_epochs(self) -> tuple[int, ...]:
        """After which epochs (counted from 1) the predictions E-step runs: e_rounds of them, evenly spaced."""
        return tuple(math.ceil(self.epochs * (r + 1) / self.e_rounds) for r in range(self.e_rounds))

    def pool_size(self, n_images: int, n_classes: int) -> int:
        if self.pool_k is not None:
            return self.pool_k
        return max(1, math.ceil(self.pool_share * n_images / max(1, n_classes)))


@dataclass(frozen=True)
class AdapterOptions(Settings):
    """Section `sew.adapter`: the adapter's size; the rest of pipeline.adapter.AdapterConfig follows the tower."""

    hidden: int = setting(128, ge=1)
    layers: int = setting(1, ge=1)
    heads: int = setting(4, ge=1)
    residual: float = setting(0.2, ge=0.0, le=1.0)  # share of the bottleneck output in the residual mix

    SECTION: ClassVar[str] = "sew.adapter"
