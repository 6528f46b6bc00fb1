"""The dataset formats: each `dataset.format` names one registered reader (timm's `create_reader` style).

A reader module registers its reading function with `@register_reader(name)`; `reader_for(format)` looks
it up, so no code branches on the format's name. Formats are
listed (`FORMATS`) in the order they were registered (pipeline.datasets imports the readers in the order
the docs list them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

READERS: dict[str, Reader] = {}


@dataclass(frozen=True)
class Reader:
    name: str
    read: Callable[..., Any]  # the reader's settings as keyword arguments → the dataset
    # True: generates its images into the directory passed as `out` (the embedded benchmark); False: imports a
    # dataset on disk, read in place, whose rows and images are then checked (pipeline.datasets.checks)
    renders: bool = False


def register_reader(name: str, renders: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: register the function as the reader of `dataset.format: name`."""
    def register(read: Callable) -> Callable:
        if name in READERS:
            raise ValueError(f"dataset format {name!r} is registered twice")
        READERS[name] = Reader(name, read, renders)
        return read
    return register


def reader_for(fmt: str) -> Reader:
    try:
        return READERS[fmt]
    except KeyError:
        raise ValueError(f"dataset.format must be one of {list(READERS)}, got {fmt!r}") from None
