"""Stage `validate`: every params key checked before any stage computes → data/params.ok.

Each stage's `check` reads and checks the keys it uses (types, ranges, choices, model names, weights that
must resolve offline, paths that must exist), so validation and use share one definition. Validation
reads the params through an audit: every bad key is reported at once, and a key that no check reads
(nor declares read under other settings, `Params.allow`) is reported as unknown, with the nearest known
key, so a typo never passes silently. `dvc.yaml` runs this stage first and every other stage depends on
its output: DVC deletes a stage's outputs before running it, so only a check that fails before any of
them starts leaves the workspace and the cache as they were. Its output is always the same bytes, so a
valid change reruns nothing through it. `mlpl <stage>` also validates first.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
from pathlib import Path

from stages.common import PARAMS_OK, VALIDATED, Params, ParamsError

CHECKED = ("prepare", "mask", "teacher", "score", "init", "correct", "features", "sew", "distill", "evaluate")


def unknown_key_errors(params: Params, unsure: set[str] = frozenset()) -> list[str]:
    """One line per key no check read, with the nearest known key of its section if any; keys under the
    top-level sections in `unsure` (read by a check that stopped early) are left out."""
    audit = params.audit
    known = sorted((audit.read | audit.allowed) if audit is not None else set())
    errors = []
    for key in params.unread_keys():
        if key.split(".")[0] in unsure:
            continue
        section, _, leaf = key.rpartition(".")
        siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == section]
        near = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
        hint = f" (did you mean '{section + '.' if section else ''}{near[0]}'?)" if near else ""
        errors.append(f"{params.source}: unknown key '{key}'{hint}")
    return errors


def validate(params: Params) -> None:
    """Raise ParamsError listing every invalid and every unknown key, or return."""
    audited = params.audited()
    audit = audited.audit
    errors, unsure = [], set()
    for name in CHECKED:
        before, read_before = len(audit.errors), set(audit.read)
        try:
            importlib.import_module(f"stages.{name}").check(audited)
            continue
        except ParamsError as e:
            errors.append(str(e))
        except ValueError as e:  # a settings object's own range check, or weights that do not resolve
            if len(audit.errors) == before:  # else it follows from a bad key already reported
                errors.append(f"{params.source}: {name}: {e}")
        unsure |= {k.split(".")[0] for k in audit.read - read_before}  # stopped early: keys left unread
    errors = audit.errors + errors + unknown_key_errors(audited, unsure)
    if errors:
        raise ParamsError("invalid params, nothing was run:\n  " + "\n  ".join(dict.fromkeys(errors)))


def code_digest() -> str:
    """sha256 over the source of pipeline/ and stages/: the rules params are checked by."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted((*root.glob("pipeline/**/*.py"), *root.glob("stages/*.py"))):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def validate_once(params: Params) -> None:
    """validate, unless these very params passed these very checks last time: each stage of a `dvc repro`
    would re-check what the `validate` stage has just checked, and importing every stage's code for it
    costs seconds per stage. The digest lives outside every DVC output (data/.params.validated)."""
    digest = f"{params.digest()} {code_digest()}"
    if VALIDATED.is_file() and VALIDATED.read_text().strip() == digest:
        return
    validate(params)
    VALIDATED.parent.mkdir(parents=True, exist_ok=True)
    VALIDATED.write_text(digest + "\n")


def run(params: Params) -> None:
    validate_once(params)
    PARAMS_OK.parent.mkdir(parents=True, exist_ok=True)
    PARAMS_OK.write_text("valid\n")  # constant: downstream stages never rerun because of it
    print(f"params valid → {PARAMS_OK}")
