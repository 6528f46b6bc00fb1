"""The partial-label methods by name (top-level param `method`): each method is one settings class, in the
module that implements it, registered here with `@register_method`. Adding a method means a module, a
params section and its tests; no stage or training loop names a method.

A method acts in one of three roles, each a hook its class implements (the stages call the hooks):
- `correct`: transfers known labels to unknown entries before training, in the `correct` stage
  (`apply(target, known, labels, embeddings, train) -> LabelTransfer`): prototypes, cooccurrence;
- `rule`: a training rule of the adapter (`sew`) and the small-CNN student (`distill`), a subclass of
  pipeline.rules.Rule, whose base class is the method `none`: plmcl, g2netpl, large_loss, label_distribution;
- `online`: a transfer trained with the adapter in `sew` (`transfer(adapter) -> OnlineTransfer`, and
  `prediction_head(paper_setting)`, the adapter head it predicts with, and `REGION_HEAD`, whether it trains
  TRM-ML's region head): hst, trm.
Methods of different roles combine (`method: [prototypes, hst, plmcl]`); two of one role, other than
`correct`, would fight over the same step and are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

ROLES = ("correct", "rule", "online")
COMBINE = ("correct",)  # roles of which several methods may run together

_METHODS: dict[str, type] = {}  # name → settings class, in registration order


def register_method(cls: type) -> type:
    """Class decorator: `cls.NAME` selects `cls` (a pipeline.settings.Settings with a `ROLE` of ROLES)."""
    name, role = getattr(cls, "NAME", ""), getattr(cls, "ROLE", "")
    if not name or role not in ROLES:
        raise TypeError(f"{cls.__name__}: a method needs a NAME and a ROLE in {ROLES}")
    if name in _METHODS and _METHODS[name] is not cls:
        raise ValueError(f"method {name!r} is registered twice ({_METHODS[name].__name__}, {cls.__name__})")
    _METHODS[name] = cls
    return cls


def fix_order(modules: Sequence[ModuleType]) -> None:
    """Order the registry as `modules` lists the methods' modules (pipeline.methods' import list), whichever a
    caller imported first; methods of other modules (a test's) keep their place after them."""
    names = [m.__name__ for m in modules]
    items = sorted(_METHODS.items(), key=lambda item: (names.index(item[1].__module__)
                                                       if item[1].__module__ in names else len(names)))
    _METHODS.clear()
    _METHODS.update(items)


def registered() -> dict[str, type]:
    """name → settings class of every registered method (pipeline.methods imports them all)."""
    return dict(_METHODS)


def selection_errors(names: tuple[str, ...]) -> list[str]:
    """Why `names` is not a valid choice of methods (unknown names, a repeat, two of one role), or []: each a
    phrase after the key, `'method' names …`."""
    known = list(_METHODS)
    errors = [f"names an unknown method {n!r} (one of {known})" for n in names if n not in _METHODS]
    if errors:
        return errors
    if len(set(names)) < len(names):
        return [f"names a method twice: {list(names)}"]
    for role in ROLES:
        same = [n for n in names if _METHODS[n].ROLE == role and n != "none"]
        if len(same) > 1 and role not in COMBINE:
            errors.append(f"names {' and '.join(same)}, both {role} methods: one trains at a time, pick one")
    return errors


@dataclass(frozen=True)
class MethodSet:
    """The settings of the methods a run uses, by role: what each stage hands its library code."""

    chosen: tuple[Any, ...] = ()  # the selected methods' settings, in registration order
    base_rule: Any = None  # the rule where none is chosen (pipeline.rules.Rule: `unknown` alone)

    def of_role(self, role: str) -> list[Any]:
        return [m for m in self.chosen if m.ROLE == role]

    @property
    def rule(self) -> Any:
        """The training rule (pipeline.rules.Rule): the chosen one, else the base rule."""
        return next(iter(self.of_role("rule")), self.base_rule)

    @property
    def online(self) -> Any | None:
        """The transfer that trains with the adapter (HST, TRM-ML), or None."""
        return next(iter(self.of_role("online")), None)

    @property
    def corrections(self) -> list[Any]:
        """The transfers `correct` applies, in registration order."""
        return self.of_role("correct")
