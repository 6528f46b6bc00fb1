"""The one module stages share: canonical artifact paths, params access with clear errors, and the
settings built from params sections that more than one stage reads (sew and ceiling: the composites and
the adapter; sew and distill: the partial-label rule)."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.settings import Settings, allowed_text, field_types, value_ok

PARAMS_FILE = Path("params.yaml")
DATA = Path("data")
PREPARED = DATA / "prepared"
IMAGES_DIR = PREPARED / "images"
MANIFEST = PREPARED / "manifest.parquet"
OBSERVED = PREPARED / "observed.parquet"
ANSWERS = DATA / "answers.parquet"  # a person's answers (git-tracked; empty as committed; `mlpl review` writes it)
TEACHER_DIR = DATA / "teacher"
TEACHER_DESCRIPTOR = TEACHER_DIR / "descriptor.json"
SCORES = DATA / "scores.zarr"
SCORES_WORK = DATA / ".scores.work"  # resumable partial store, outside every DVC output


def work_dir(stage: str) -> Path:
    """Where a long stage keeps its resumable checkpoint: outside every DVC output, removed on success."""
    return DATA / f".{stage}.work"


def clear_work_dir(stage: str) -> None:
    """Called once the stage's outputs are in place: its checkpoint is no longer needed."""
    shutil.rmtree(work_dir(stage), ignore_errors=True)


LABELS = DATA / "labels"
INITIAL = LABELS / "initial.parquet"
CORRECTED = LABELS / "corrected.parquet"
REFINED = LABELS / "refined.parquet"
PROTOTYPES = DATA / "prototypes.zarr"
FEATURES = DATA / "features.zarr"  # the frozen tower's features of the train images (pipeline.features)
PARAMS_OK = DATA / "params.ok"
VALIDATED = DATA / ".params.validated"  # digest of the params `validate` last passed; not a DVC output
# Every rung of the label ladder, in stage order → (label table, column): the column is named after the rung.
LABEL_COLUMNS = {**{name: (INITIAL, name) for name in ("z0", "tiles", "crops", "cdul", "cut")},
                 "corrected": (CORRECTED, "corrected"), "refined": (REFINED, "refined")}
MODELS = DATA / "models"
ADAPTER = MODELS / "adapter.pt"
STUDENT = MODELS / "student.pt"
CEILING = MODELS / "ceiling.pt"
REPORTS = Path("reports")
METRICS = REPORTS / "metrics.json"
PLOTS = REPORTS / "plots"
REPORT = REPORTS / "report.html"


_DEPRECATION_NOTICES: set[str] = set()  # the deprecated keys already reported by this process


class ParamsError(ValueError):
    pass


def params_digest(params: Any) -> str:
    """sha256 of params' content (key order does not count): `Params.digest`, and an export's run params."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


class DeprecatedKey(FutureWarning):
    """A params key under its old name: still read, with one line saying what to write instead."""


_format_warning = warnings.formatwarning


def _one_line_for_deprecated_keys(message, category, filename, lineno, line=None) -> str:
    """A deprecated key is one line for the person who wrote the params, wherever the stage runs (the CLI, a
    benchmark calling a stage in-process): the source line that warned means nothing to them. Every other
    warning keeps Python's format."""
    if issubclass(category, DeprecatedKey):
        return f"warning: {message}\n"
    return _format_warning(message, category, filename, lineno, line)


warnings.formatwarning = _one_line_for_deprecated_keys


def deprecated(notice: str) -> None:
    """Say `notice` (a deprecated key, and what to write instead) once per process, however many checks read
    the key, as one line (`DeprecatedKey`)."""
    if notice not in _DEPRECATION_NOTICES:
        _DEPRECATION_NOTICES.add(notice)
        warnings.warn(notice, DeprecatedKey, stacklevel=3)


S = TypeVar("S", bound=Settings)


class ParamsAudit:
    """What one validation pass saw, shared by a Params view and its sections: the keys read, the keys
    declared used under other settings (`allow`), and the errors found (collected, not raised)."""

    def __init__(self) -> None:
        self.read: set[str] = set()
        self.allowed: set[str] = set()
        self.errors: list[str] = []


def _fallback(kind: type | tuple, choices: tuple | None, lo: float | None, default: Any) -> Any:
    """A well-typed stand-in for a key found invalid while collecting errors, so the check goes on to
    the next key (what the check then builds from it is never used)."""
    if default is not ...:
        return default
    if choices:
        return choices[0]
    first = kind[0] if isinstance(kind, tuple) else kind
    if first in (int, float):
        return first(lo if lo is not None else 1)
    return {bool: False, str: "", list: [], dict: {}}.get(first)


class Params:
    """A view of params.yaml; `get("score.crops", int)` fails naming the key and the file.

    With an audit (`audited()`), errors are collected instead of raised and every key read is recorded,
    so validation reports every bad key at once and the keys no check reads (`unread_keys`).
    """

    def __init__(self, data: dict, source: Path, prefix: str = "", audit: ParamsAudit | None = None):
        self._data, self._source, self._prefix, self._audit = data, source, prefix, audit

    @classmethod
    def load(cls, path: Path = PARAMS_FILE) -> Params:
        if not path.is_file():
            raise ParamsError(f"{path}: params file not found (run from the project root)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ParamsError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(data, dict):
            raise ParamsError(f"{path}: must be a mapping of keys, got {type(data).__name__}")
        return cls(data, path)

    def digest(self) -> str:
        """sha256 of the params' content (not of the file's bytes: comments and key order do not count)."""
        return params_digest(self._data)

    def audited(self) -> Params:
        """The same params, with a fresh audit (see the class docstring)."""
        return Params(self._data, self._source, self._prefix, ParamsAudit())

    @property
    def audit(self) -> ParamsAudit | None:
        return self._audit

    @property
    def source(self) -> Path:
        return self._source

    def as_dict(self) -> dict:
        """A deep copy of this view's values (for a report of the run)."""
        import copy

        return copy.deepcopy(self._data)

    def without(self, *names: str) -> Params:
        """The same view less the keys `names` (dotted, relative to it), sharing its audit."""
        import copy

        data = copy.deepcopy(self._data)
        for name in names:
            *parents, leaf = name.split(".")
            node = data
            for part in parents:
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node.pop(leaf, None)
        return Params(data, self._source, self._prefix, self._audit)

    def section(self, name: str) -> Params:
        sub = self._node(name)
        if not isinstance(sub, dict):
            raise ParamsError(f"{self._source}: '{self._key(name)}' must be a mapping")
        return Params(sub, self._source, self._key(name) + ".", self._audit)

    def allow(self, *names: str) -> None:
        """Declare keys (or whole sections) read under other settings: present, they are not unknown."""
        if self._audit is not None:
            self._audit.allowed.update(self._key(n) for n in names)

    def fail(self, name: str, message: str, fallback: Any = None) -> Any:
        """Raise ParamsError for key `name`; while auditing, record it and return `fallback` instead."""
        error = f"{self._source}: '{self._key(name)}' {message}"
        if self._audit is None:
            raise ParamsError(error)
        self._audit.errors.append(error)
        return fallback

    def _key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def _node(self, name: str):
        node: Any = self._data
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ParamsError(f"{self._source}: missing key '{self._key(name)}'")
            node = node[part]
        return node

    def _raw(self, name: str):
        if self._audit is not None:
            self._audit.read.add(self._key(name))
        return self._node(name)

    def unread_keys(self) -> list[str]:
        """Leaf keys of the file that no check read and none declared (`allow`), in file order."""
        audit = self._audit or ParamsAudit()
        covered = audit.read | audit.allowed
        out = []

        def walk(node: dict, prefix: str) -> None:
            for k, v in node.items():
                key = f"{prefix}{k}"
                if key in covered:
                    continue
                if isinstance(v, dict) and v:
                    walk(v, key + ".")
                else:
                    out.append(key)

        walk(self._data, self._prefix)
        return out

    def get(self, name: str, kind: type | tuple = object, default: Any = ...,
            choices: tuple | None = None, lo: float | None = None, hi: float | None = None) -> Any:
        try:
            value = self._raw(name)
        except ParamsError as e:
            if default is not ...:
                return default
            if self._audit is None:
                raise
            self._audit.errors.append(str(e))
            return _fallback(kind, choices, lo, default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        stand_in = _fallback(kind, choices, lo, default)
        if kind is not object and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            return self.fail(name, f"must be {want}, got {value!r}", stand_in)
        if choices is not None and value not in choices:
            near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            return self.fail(name, f"must be one of {list(choices)}, got {value!r}{hint}", stand_in)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            allowed = f"in [{lo}, {hi}]" if lo is not None and hi is not None else (
                f">= {lo}" if lo is not None else f"<= {hi}")
            return self.fail(name, f"must be {allowed}, got {value!r}", stand_in)
        return value

    def build(self, cls: type[S]) -> S:
        """The settings dataclass `cls` (pipeline.settings) from this view: each field read under its
        params key (the field's name, or `cls.PARAMS_KEYS[name]` relative to this view) and checked
        against its type and metadata, so the dataclass is the one definition of the section. An absent
        key takes the field's default; a deprecated key (`cls.DEPRECATED`) still works, with a warning.
        While auditing, every bad key is collected and the result built from stand-ins."""
        keys = cls.PARAMS_KEYS
        types_of = field_types(cls)
        values, bad = {}, False
        for f in dataclasses.fields(cls):
            key = keys.get(f.name, f.name)
            old = next((o for o, new in cls.DEPRECATED.items() if new == f.name and self._has(o)), None)
            if old is not None:
                if self._has(key):
                    self._raw(old), self._raw(key)  # both are known keys: one error names them, no "unknown key"
                    values[f.name] = self.fail(old, f"is the old name of '{self._key(key)}': keep one of them",
                                               f.default)
                    bad = True
                    continue
                deprecated(f"{self._source}: '{self._key(old)}' is deprecated, write '{self._key(key)}'")
                key = old
            nested = types_of[f.name][0]
            if isinstance(nested, type) and issubclass(nested, Settings):
                values[f.name] = self.build(nested)  # a nested settings dataclass, read from the same section
                continue
            if not self._has(key):
                values[f.name] = f.default
                continue
            if f.metadata.get("auto") and self._raw(key) in ("auto", None):  # `auto` or null: None
                values[f.name] = None
                continue
            kinds = types_of[f.name]
            kind = list if f.metadata.get("pair") else kinds[0] if len(kinds) == 1 else kinds
            before = len(self._audit.errors) if self._audit is not None else 0
            value = self.get(key, kind, choices=f.metadata.get("choices"))  # get names the nearest choice
            if self._audit is not None and len(self._audit.errors) > before:
                values[f.name], bad = f.default, True
                continue
            if not value_ok(f.metadata, value):
                auto = " or auto" if f.metadata.get("auto") else ""
                value = self.fail(key, f"must be {allowed_text(f.metadata)}{auto}, got {value!r}", f.default)
                bad = True
            elif f.metadata.get("pair"):
                value = (float(value[0]), float(value[1]))
            values[f.name] = value
        if bad:
            return cls()
        try:
            return cls(**values)
        except ValueError as e:  # a relation between fields
            return self._relation(cls, e)

    def _relation(self, cls: type[S], error: ValueError) -> S:
        if self._audit is None:
            raise ParamsError(f"{self._source}: {error}") from None
        self._audit.errors.append(f"{self._source}: {error}")
        return cls()

    def _has(self, name: str) -> bool:
        try:
            self._node(name)
            return True
        except ParamsError:
            return False

    def path(self, name: str, kind: str = "file") -> str:
        """A path param that must exist now (kind: file or dir), so a typo fails before any compute."""
        value = self.get(name, str)
        ok = Path(value).is_dir() if kind == "dir" else Path(value).is_file()
        if not ok:
            what = "a directory" if kind == "dir" else "a file"
            return self.fail(name, f"= {value}: not {what}", value)
        return value

    def model_name(self, name: str) -> str:
        """An open_clip model config name (ours included)."""
        from pipeline.clip import model_names

        value = self.get(name, str)
        known = model_names()
        if value not in known:
            near = difflib.get_close_matches(value, known, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else " (`python -c 'import open_clip; " \
                "print(open_clip.list_models())'` lists them)"
            return self.fail(name, f"must be an open_clip model name, got {value!r}{hint}", value)
        return value



def resolve_weights(p: Params, model: str, pretrained: str) -> None:
    """Check that `pretrained` (key of section `p`) resolves offline for `model`, as the stage will load it:
    a wrong tag or missing weights fail in validation, before DVC deletes any output."""
    from pipeline.clip import WeightsNotAvailable, resolve_pretrained

    try:
        resolve_pretrained(model, pretrained)
    except WeightsNotAvailable as e:
        p.fail("pretrained", f"does not resolve offline: {e}")
