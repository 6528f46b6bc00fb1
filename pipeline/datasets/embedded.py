"""The `embedded` format: the seeded scene benchmark (pipeline.scenes), rendered to PNG files.

Unlike the importers it generates its images, into the directory it is given; they need no checks and it
reports no issues. Scene i is drawn from its own stream (`DATASET_STREAM`, seed, i), so the dataset does
not depend on how many scenes are rendered around it, and never overlaps the teacher's own scenes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from pipeline.datasets.registry import register_reader
from pipeline.progress import progress_bar
from pipeline.scenes import SceneConfig, render_scene, scene_rng
from pipeline.settings import Settings, setting

DATASET_STREAM = 0  # the teacher trains on scenes of another stream: never on these


@dataclass
class RenderedScenes:
    image_ids: list[str]
    paths: list[str]  # relative to the directory rendered into
    splits: list[str]
    labels: np.ndarray  # int8 [N, C]
    salient: np.ndarray  # int32 [N]: class index of each scene's salient object
    classes: list[str]

    def columns(self) -> dict:
        """The manifest's columns."""
        return {"image_id": self.image_ids, "path": self.paths, "split": self.splits, "labels": self.labels,
                "salient": self.salient}


@dataclass(frozen=True)
class EmbeddedSettings(Settings):
    """The `dataset` keys of `format: embedded`: the scenes (SceneConfig, same section) and how many."""

    cfg: SceneConfig = SceneConfig()
    seed: int = setting(0)
    n_train: int = setting(1000, ge=1)
    n_test: int = setting(500, ge=1)

    SECTION: ClassVar[str] = "dataset"


@register_reader("embedded", renders=True, settings=EmbeddedSettings)
def render_scenes(out: Path, cfg: SceneConfig, seed: int, n_train: int, n_test: int) -> RenderedScenes:
    """Render n_train + n_test scenes as `out/scene-<i>.png`, the first n_train the train split."""
    ids, paths, splits, labels, salient = [], [], [], [], []
    for i in progress_bar(range(n_train + n_test), desc="prepare", unit="img"):
        scene = render_scene(scene_rng(seed, DATASET_STREAM, i), cfg)
        image_id = f"scene-{i:06d}"
        Image.fromarray(scene.image).save(out / f"{image_id}.png")
        ids.append(image_id)
        paths.append(f"{image_id}.png")
        splits.append("train" if i < n_train else "test")
        labels.append(scene.labels)
        salient.append(scene.salient)
    return RenderedScenes(ids, paths, splits, np.stack(labels).astype(np.int8), np.array(salient, np.int32),
                          list(cfg.classes))
