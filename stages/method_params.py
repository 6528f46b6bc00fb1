"""The top-level `method` param → the settings of the chosen partial-label methods (pipeline.method_registry),
for the stages they act in (`correct`, `sew`, `distill`). Not a stage: the glue those stages share, kept out
of stages.common so that the stages upstream of `mask` never depend on a method's code.

`method` is a registered name or a list of them (`method: [prototypes, hst]`). Every registered method's
section is checked whether chosen or not, so switching one on never meets a bad key late.

A params file from before `method` picked methods with five switches; without a `method` key they still
work, with one deprecation line: `rule: X` (method X), `prototypes.threshold` and `cooccurrence.threshold`
other than `none` (the method, the value now its threshold rule only), `hst.modules` other than `none` (hst,
the value now its modules only) and `trm.enabled: true` (trm). Beside `method`, `rule` and `trm.enabled`
are errors that name `method`, and `none` is no longer a value of the others.
"""

from __future__ import annotations

from pipeline.methods import METHODS, MethodSet, selection_errors
from pipeline.settings import Settings
from stages.common import Params, deprecated

_ABSENT = object()
# an old params file's switches: key → (the method it turned on, its off value; None: the value is the name)
OLD_SWITCHES = {"rule": (None, "none"), "prototypes.threshold": ("prototypes", "none"),
                "cooccurrence.threshold": ("cooccurrence", "none"), "hst.modules": ("hst", "none"),
                "trm.enabled": ("trm", False)}
REMOVED = ("rule", "trm.enabled")  # old keys with no meaning left beside `method`


def _old_switches(params: Params) -> tuple[tuple[str, ...], Params]:
    """The methods an old params file's switches turn on, and the params less what only switched."""
    names, drop, seen = [], [], []
    for key, (name, off) in OLD_SWITCHES.items():
        value = params.get(key, default=_ABSENT)
        if value is _ABSENT:
            continue
        seen.append(key)
        if value != off:
            names.append(value if name is None else name)
        if key in REMOVED or value == off:
            drop.append(key)
    names = [n for n in METHODS if n in names] + [n for n in names if n not in METHODS]  # `method`'s order
    if seen:
        chosen = ", ".join(names) if len(names) == 1 else f"[{', '.join(names)}]" if names else "none"
        deprecated(f"{params.source}: {', '.join(repr(k) for k in seen)} no longer switch methods on: write "
                   f"'method: {chosen}' (docs: README, Partial labels)")
    return tuple(names), params.without(*drop)


def method_names(params: Params) -> tuple[tuple[str, ...], Params]:
    """The methods `method` names (an old file: its switches), and the view their sections build from."""
    raw = params.get("method", default=_ABSENT)
    if raw is _ABSENT:
        return _old_switches(params)
    stale = []
    for key, (_, off) in OLD_SWITCHES.items():
        value = params.get(key, default=_ABSENT)
        if key in REMOVED and value is not _ABSENT:
            params.fail(key, "is an old switch of 'method': remove it and name the method in 'method'")
        elif value == off:
            stale.append(key)
            params.fail(key, f"= {off!r} was an old off switch: 'method' switches methods now; remove the key")
    params = params.without(*stale)  # reported once here, not again by the section's check
    names = tuple(raw) if isinstance(raw, list) else (raw,)
    if not all(isinstance(n, str) for n in names):
        return params.fail("method", f"must be a method name or a list of them, got {raw!r}", ()), params
    return names, params


def build_method(params: Params, cls: type[Settings]) -> Settings:
    """One method's settings: from its section, or (a rule, no SECTION) from the top level with its keys."""
    return params.section(cls.SECTION).build(cls) if cls.SECTION else params.build(cls)


def build_methods(params: Params, roles: tuple[str, ...]) -> MethodSet:
    """The chosen methods of `roles` (the ones a stage runs), by role; every registered method of those roles
    has its section checked, chosen or not (`validate` runs every stage's check, so every section is)."""
    names, view = method_names(params)
    errors = selection_errors(names)
    for error in errors:
        params.fail("method", error)
    built = {name: build_method(view, cls) for name, cls in METHODS.items() if cls.ROLE in roles}
    chosen = () if errors else tuple(built[n] for n in built if n in names)
    return MethodSet(chosen, built.get("none"))
