"""The one module stages share: canonical artifact paths, params access with clear errors, and the
settings built from params sections that more than one stage reads (sew and ceiling: the composites and
the adapter; sew and distill: the partial-label rule)."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path
from typing import Any

import yaml

from pipeline.scenes import SceneConfig
from pipeline.settings import E_STEPS, OVERLAY_LABELS, PASTES, RULES, AdapterOptions, RuleSettings, SewSettings

PARAMS_FILE = Path("params.yaml")
DATA = Path("data")
PREPARED = DATA / "prepared"
IMAGES_DIR = PREPARED / "images"
MANIFEST = PREPARED / "manifest.parquet"
OBSERVED = PREPARED / "observed.parquet"
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
PARAMS_OK = DATA / "params.ok"
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


class ParamsError(ValueError):
    pass


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
        import open_clip

        from pipeline.clip import register_model_configs

        value = self.get(name, str)
        register_model_configs()
        if value not in open_clip.list_models():
            near = difflib.get_close_matches(value, open_clip.list_models(), n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else " (`python -c 'import open_clip; " \
                "print(open_clip.list_models())'` lists them)"
            return self.fail(name, f"must be an open_clip model name, got {value!r}{hint}", value)
        return value

    def pair(self, name: str, lo: float = 0.0, hi: float = float("inf")) -> tuple[float, float]:
        value = self.get(name, list)
        if len(value) != 2 or not all(isinstance(v, (int, float)) for v in value) or not (
                lo <= value[0] <= value[1] <= hi):
            return self.fail(name, f"must be [low, high] within [{lo}, {hi}], got {value!r}", (lo, lo))
        return float(value[0]), float(value[1])


def resolve_weights(p: Params, model: str, pretrained: str) -> None:
    """Check that `pretrained` (key of section `p`) resolves offline for `model`, as the stage will load it:
    a wrong tag or missing weights fail in validation, before DVC deletes any output."""
    from pipeline.clip import WeightsNotAvailable, resolve_pretrained

    try:
        resolve_pretrained(model, pretrained)
    except WeightsNotAvailable as e:
        p.fail("pretrained", f"does not resolve offline: {e}")


def scene_config(p: Params) -> SceneConfig:
    """The embedded benchmark's scene settings from the `dataset` section (prepare renders, teacher trains on them)."""
    return SceneConfig(image_size=p.get("image_size", int, lo=16), n_classes=p.get("n_classes", int, lo=2, hi=8),
                       max_small=p.get("max_small", int, lo=0, hi=5))


def sew_settings(p: Params) -> SewSettings:
    """The composites and EM of section `sew` (read by the sew and ceiling stages)."""
    k = p.get("k", (int, str))
    if k != "auto" and (isinstance(k, str) or k < 1):
        k = p.fail("k", f"must be auto or an int >= 1, got {k!r}", "auto")
    d = SewSettings()
    return SewSettings(p=p.get("p", float, lo=0.0, hi=1.0), q=p.get("q", float, lo=0.0, hi=1.0),
                       max_overlays=p.get("L", int, lo=0), pool_k=None if k == "auto" else k,
                       pool_share=p.get("pool_share", float, lo=0.0, hi=1.0, default=d.pool_share),
                       overlay_label=p.get("overlay_label", str, choices=OVERLAY_LABELS, default=d.overlay_label),
                       paste=p.get("paste", str, choices=PASTES, default=d.paste),
                       placement_tries=p.get("placement_tries", int, lo=1, default=d.placement_tries),
                       cover_limit=p.get("cover_limit", float, lo=0.0, hi=1.0, default=d.cover_limit),
                       e_step=p.get("e_step", str, choices=E_STEPS, default=d.e_step),
                       e_weight=p.get("e_weight", float, lo=0.0, hi=1.0, default=d.e_weight),
                       e_rounds=p.get("e_rounds", int, lo=1, default=d.e_rounds),
                       epochs=p.get("epochs", int, lo=1),
                       batch_size=p.get("batch_size", int, lo=2), lr=p.get("lr", float, lo=0.0),
                       estimator_lr=p.get("estimator_lr", float, lo=0.0),
                       weight_decay=p.get("weight_decay", float, lo=0.0, default=d.weight_decay),
                       seed=p.get("seed", int))


def adapter_options(p: Params) -> AdapterOptions:
    """`sew.adapter`: the adapter's size."""
    a = p.section("adapter")
    return AdapterOptions(hidden=a.get("hidden", int, lo=1), layers=a.get("layers", int, lo=1),
                          heads=a.get("heads", int, lo=1), residual=a.get("residual", float, lo=0.0, hi=1.0))


def backbone_params(p: Params) -> tuple[str, str, bool]:
    """`sew.backbone`: (model, pretrained, trust_checkpoint) of the frozen tower the adapter trains on."""
    b = p.section("backbone")
    return b.get("model", str), b.get("pretrained", str), b.get("trust_checkpoint", bool, default=False)


def rule_settings(params: Params) -> RuleSettings:
    """The partial-label training rule (top-level `rule`) with the constants of its own section."""
    name = params.get("rule", str, choices=RULES)
    pl, g2, ll, ld = (params.section(k) for k in ("plmcl", "g2netpl", "large_loss", "label_distribution"))
    return RuleSettings(
        name=name, plmcl_eta=pl.get("eta", float, lo=0.0, hi=1.0), plmcl_alpha=pl.get("alpha", float, lo=0.0, hi=1.0),
        plmcl_beta=pl.get("beta", float, lo=0.0, hi=1.0), g2netpl_eta=g2.get("eta", float, lo=0.0),
        g2netpl_lr=g2.get("lr", float, lo=0.0), g2netpl_steps=g2.get("steps", int, lo=0),
        ll_delta=ll.get("delta", float, lo=0.0, hi=100.0), ll_max_rate=ll.get("max_rate", float, lo=0.0, hi=1.0),
        ld_sigma=ld.get("sigma", float, lo=1e-6))
