"""`mlpl config FILE`: a config in configs/ holds only its differences from params.yaml; this applies it.

Printed, its differences are `dvc exp run` flags in Hydra's override grammar (`-S ++key=value`, DVC's
own syntax for `--set-param`), so `mlpl config configs/voc2007.yaml | xargs dvc exp run` runs the
config as an experiment; with `--write`, DVC's own override code applies them to params.yaml in place,
keeping its comments, and `dvc repro` runs it. Either way every default the config does not name comes
from params.yaml, so a new default reaches every config.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from stages.common import ParamsError

INCLUDE = "include"  # a config's key: the configs it builds on, relative to its folder, merged before its own keys


def merge(base: dict, top: dict) -> dict:
    """`base` with `top`'s keys over it, section by section (a list or value of `top` replaces)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The config's params keys, after the configs it includes (`include: FILE` or a list of them): what
    every real-photograph config shares is written once (configs/shared/real_images.yaml)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: config not found (the configs are in configs/)")
    if path.resolve() in _chain:
        raise ParamsError(f"{path}: includes itself ({' → '.join(str(p) for p in (*_chain, path.resolve()))})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: must be a mapping of params keys")
    included = data.pop(INCLUDE, [])
    included = [included] if isinstance(included, str) else included
    if not isinstance(included, list) or not all(isinstance(name, str) for name in included):
        raise ParamsError(f"{path}: '{INCLUDE}' must be a config file or a list of them, got {included!r}")
    merged: dict = {}
    for name in included:
        merged = merge(merged, read_config(path.parent / name, (*_chain, path.resolve())))
    return merge(merged, data)


def leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf of a nested mapping, in file order; a list is one leaf."""
    out = []
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out += leaves(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def override(key: str, value: object) -> str:
    """`++key=value` in Hydra's override grammar: set the key, adding it if params.yaml lacks it."""
    if isinstance(value, str):
        text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    else:
        text = json.dumps(value)  # numbers, booleans, null, lists: Hydra reads JSON-like literals
    return f"++{key}={text}"


def overrides(config: dict) -> list[str]:
    return [override(k, v) for k, v in leaves(config)]


def run(path: Path, params_file: Path, write: bool) -> None:
    flags = overrides(read_config(path))
    if not write:
        for flag in flags:  # one per line, double-quoted for xargs (inside which a backslash is literal)
            if '"' in flag or "\n" in flag:
                raise ParamsError(f"{path}: {flag} cannot pass through xargs; use `mlpl config {path} --write`")
            print("-S")
            print(f'"{flag}"')
        return
    from dvc.utils.hydra import apply_overrides

    apply_overrides(params_file, flags)
    print(f"{path}: {len(flags)} keys written into {params_file} (`git diff {params_file}` shows them)")
