"""Shared glue for stages: params access with clear errors, canonical artifact paths, JSON output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.scenes import SceneConfig
from pipeline.storage import atomic_path, open_store

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


class Params:
    """A view of params.yaml; `get("score.crops", int)` fails naming the key and the file."""

    def __init__(self, data: dict, source: Path, prefix: str = ""):
        self._data, self._source, self._prefix = data, source, prefix

    @classmethod
    def load(cls, path: Path = PARAMS_FILE) -> Params:
        if not path.is_file():
            raise ParamsError(f"{path}: params file not found (run from the project root)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ParamsError(f"{path}: not valid YAML ({e})") from e
        return cls(data, path)

    @property
    def source(self) -> Path:
        return self._source

    def section(self, name: str) -> Params:
        sub = self._raw(name)
        if not isinstance(sub, dict):
            raise ParamsError(f"{self._source}: '{self._key(name)}' must be a mapping")
        return Params(sub, self._source, self._key(name) + ".")

    def _key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def _raw(self, name: str):
        node: Any = self._data
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ParamsError(f"{self._source}: missing key '{self._key(name)}'")
            node = node[part]
        return node

    def get(self, name: str, kind: type | tuple = object, default: Any = ...,
            choices: tuple | None = None, lo: float | None = None, hi: float | None = None) -> Any:
        try:
            value = self._raw(name)
        except ParamsError:
            if default is ...:
                raise
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is not object and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ParamsError(f"{self._source}: '{self._key(name)}' must be {want}, got {value!r}")
        if choices is not None and value not in choices:
            raise ParamsError(f"{self._source}: '{self._key(name)}' must be one of {list(choices)}, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            allowed = f"in [{lo}, {hi}]" if lo is not None and hi is not None else (
                f">= {lo}" if lo is not None else f"<= {hi}")
            raise ParamsError(f"{self._source}: '{self._key(name)}' must be {allowed}, got {value!r}")
        return value

    def path(self, name: str, kind: str = "file") -> str:
        """A path param that must exist now (kind: file or dir), so a typo fails before any compute."""
        value = self.get(name, str)
        ok = Path(value).is_dir() if kind == "dir" else Path(value).is_file()
        if not ok:
            what = "a directory" if kind == "dir" else "a file"
            raise ParamsError(f"{self._source}: '{self._key(name)}' = {value}: not {what}")
        return value

    def model_name(self, name: str) -> str:
        """An open_clip model config name (ours included)."""
        import open_clip

        from pipeline.clip import register_model_configs

        value = self.get(name, str)
        register_model_configs()
        if value not in open_clip.list_models():
            near = [m for m in open_clip.list_models() if m.lower().startswith(value.lower()[:3])][:8]
            raise ParamsError(f"{self._source}: '{self._key(name)}' must be an open_clip model name "
                              f"(open_clip.list_models()), got {value!r}; similar: {near}")
        return value

    def pair(self, name: str, lo: float = 0.0, hi: float = float("inf")) -> tuple[float, float]:
        value = self.get(name, list)
        if len(value) != 2 or not all(isinstance(v, (int, float)) for v in value) or not (
                lo <= value[0] <= value[1] <= hi):
            raise ParamsError(f"{self._source}: '{self._key(name)}' must be [low, high] within [{lo}, {hi}], "
                              f"got {value!r}")
        return float(value[0]), float(value[1])


def scene_config(p: Params) -> SceneConfig:
    """The embedded benchmark's scene settings from the `dataset` section (prepare renders, teacher trains on them)."""
    return SceneConfig(image_size=p.get("image_size", int, lo=16), n_classes=p.get("n_classes", int, lo=2, hi=8),
                       max_small=p.get("max_small", int, lo=0, hi=5))


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the stage that writes it first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def scored_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """(image_emb [N, D], text_emb [C, D]) from data/scores.zarr, as float32."""
    scores = open_store(SCORES, required=("image_emb", "text_emb"))
    return np.asarray(scores["image_emb"][:], np.float32), np.asarray(scores["text_emb"][:], np.float32)
