"""Settings as typed dataclasses, each the one definition of its params section: a field per key, its
type, default, and range or choices in the field's metadata (`setting(...)`). `stages.common.Params.build`
reads a section into one, reporting every bad or unknown key at once; constructing one directly checks
the same metadata (`Settings.__post_init__`), so a library caller meets the same rules as a params file.

Each settings dataclass lives with the code it configures (e.g. pipeline.sew.SewSettings), so a stage
depends on the settings it reads and no others; this module holds only what they share.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar


def setting(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, choices: tuple | None = None, auto: bool = False, pair: bool = False) -> Any:
    """A settings field: its default and what values it takes (bounds, choices; `auto`: the params
    value `auto` stands for None; `pair`: a (low, high) tuple, low <= high, both within the bounds)."""
    meta = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}.items() if v is not None}
    if auto:
        meta["auto"] = True
    if pair:
        meta["pair"] = True
    return field(default=default, metadata=meta)


def allowed_text(meta: typing.Mapping) -> str:
    """`in [0, 1)`, `>= 1`, `one of ['a', 'b']`: what a field's metadata allows, for error messages."""
    if "choices" in meta:
        return f"one of {list(meta['choices'])}"
    if meta.get("pair"):
        lo = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else ("(", "-inf")
        hi = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else (")", "inf")
        return f"[low, high] within {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
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
    if meta.get("pair"):
        bounds = {k: v for k, v in meta.items() if k != "pair"}
        return (isinstance(value, (tuple, list)) and len(value) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                and value[0] <= value[1] and all(value_ok(bounds, v) for v in value))
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
    PARAMS_KEYS: ClassVar[dict[str, str]] = {}  # field → its params key, where they differ

    def __post_init__(self) -> None:
        errors = [f"{self.key(f.name)} must be {allowed_text(f.metadata)}, got {getattr(self, f.name)!r}"
                  for f in fields(self) if not value_ok(f.metadata, getattr(self, f.name))]
        if not errors:
            errors = self.relation_errors()
        if errors:
            raise ValueError("; ".join(errors))

    @classmethod
    def key(cls, name: str) -> str:
        """The params key of field `name`, for messages."""
        key = cls.PARAMS_KEYS.get(name, name)
        return f"{cls.SECTION}.{key}" if cls.SECTION else key

    def relation_errors(self) -> list[str]:
        return []
