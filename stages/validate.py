"""Stage `validate`: every params key checked before any stage computes → data/params.ok.

Each stage's `check` reads and checks the keys it uses (types, ranges, choices, model names, paths that
must exist), so validation and use share one definition. `dvc.yaml` runs this stage first and every
other stage depends on its output: DVC deletes a stage's outputs before running it, so only a check that
fails before any of them starts leaves the workspace and the cache as they were. Its output is always
the same bytes, so a valid change reruns nothing through it. `mlpl <stage>` also validates first.
"""

from __future__ import annotations

import importlib

from stages.common import PARAMS_OK, Params, ParamsError

CHECKED = ("prepare", "mask", "teacher", "score", "init", "correct", "sew", "distill", "evaluate")


def validate(params: Params) -> None:
    """Raise ParamsError listing every invalid key, or return."""
    errors = []
    for name in CHECKED:
        try:
            importlib.import_module(f"stages.{name}").check(params)
        except ParamsError as e:
            errors.append(str(e))
        except ValueError as e:  # a settings object's own range check
            errors.append(f"{params.source}: {name}: {e}")
    if errors:
        raise ParamsError("invalid params, nothing was run:\n  " + "\n  ".join(dict.fromkeys(errors)))


def run(params: Params) -> None:
    validate(params)
    PARAMS_OK.parent.mkdir(parents=True, exist_ok=True)
    PARAMS_OK.write_text("valid\n")  # constant: downstream stages never rerun because of it
    print(f"params valid → {PARAMS_OK}")
