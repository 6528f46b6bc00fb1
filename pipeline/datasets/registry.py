"""The dataset formats: each `dataset.format` names one registered reader (timm's `create_reader` style).

A reader module registers its reading function with `@register_reader(name, settings=…)`; `reader_for(format)`
looks it up, so no code branches on the format's name. Its settings dataclass (pipeline.settings) is the one
definition of the `dataset` keys that format reads; its fields are the reading function's keyword arguments. Formats are
listed (`FORMATS`) in the order they were registered (pipeline.datasets imports the readers in the order
the docs list them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, get_type_hints

READERS: dict[str, Reader] = {}


@dataclass(frozen=True)
class Reader:
    name: str
    read: Callable[..., Any]  # the reader's settings as keyword arguments → the dataset
    # True: generates its images into the directory passed as `out` (the embedded benchmark); False: imports a
    # dataset on disk, read in place, whose rows and images are then checked (pipeline.datasets.checks)
    renders: bool = False
    settings: type | None = None  # its `dataset` keys (a pipeline.settings.Settings dataclass)
    paths: tuple[tuple[str, str], ...] = ()  # (params key, "dir" or "file"): paths that must exist before reading

    def arguments(self, settings: Any) -> dict[str, Any]:
        """The reading function's keyword arguments from its settings (nested settings stay objects)."""
        return {f.name: getattr(settings, f.name) for f in fields(settings)}


def register_reader(name: str, renders: bool = False, settings: type | None = None,
                    paths: dict[str, str] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register the function as the reader of `dataset.format: name`, with its settings class and
    the params keys among them that name paths (→ "dir" or "file")."""
    def register(read: Callable) -> Callable:
        if name in READERS:
            raise ValueError(f"dataset format {name!r} is registered twice")
        READERS[name] = Reader(name, read, renders, settings, tuple((paths or {}).items()))
        return read
    return register


def settings_keys(cls: type) -> list[str]:
    """The params keys a settings class reads from its section (a nested settings class's keys included)."""
    keys = []
    hints = get_type_hints(cls)
    for f in fields(cls):
        nested = hints[f.name]
        if isinstance(nested, type) and is_dataclass(nested):
            keys += settings_keys(nested)
        else:
            keys.append(cls.PARAMS_KEYS.get(f.name, f.name))
    return keys


def reader_for(fmt: str) -> Reader:
    try:
        return READERS[fmt]
    except KeyError:
        raise ValueError(f"dataset.format must be one of {list(READERS)}, got {fmt!r}") from None
