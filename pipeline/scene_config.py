"""What every kind of embedded scene is made of: the settings (section `dataset`), the classes, the shapes
and the scene record. The renderers are pipeline.scenes (`simple`) and pipeline.contexts (`contexts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipeline.settings import Settings, setting

SHAPE_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "cross", "ring", "diamond", "frame", "bar",
)
SUPERSAMPLE = 2  # render at 2x and box-downsample: anti-aliased edges
SCENE_KINDS = ("simple", "contexts")
COLOUR_FAMILIES: tuple[tuple[str, float], ...] = (("red", 0.0), ("blue", 0.62), ("green", 0.33))  # hue centres
CONTEXT_CLASSES: tuple[str, ...] = tuple(f"{family} {shape}" for family, _ in COLOUR_FAMILIES
                                         for shape in SHAPE_CLASSES)  # `contexts` scenes: shape × colour family


@dataclass(frozen=True)
class SceneConfig(Settings):
    """The embedded benchmark's scenes: section `dataset` (prepare renders them, the toy teacher trains on them)."""

    image_size: int = setting(64, ge=16)
    salient_size: tuple[float, float] = setting((0.45, 0.65), gt=0.0, le=1.0, pair=True)  # side / canvas side
    small_size: tuple[float, float] = setting((0.17, 0.25), gt=0.0, le=1.0, pair=True)
    max_small: int = setting(3, ge=0, le=5)
    noise: float = setting(6.0, ge=0.0)  # std of pixel noise, in 0..255 units
    n_classes: int = setting(len(SHAPE_CLASSES), ge=2, le=len(CONTEXT_CLASSES))  # the first n of `classes`
    scenes: str = setting("simple", choices=SCENE_KINDS)  # simple: independent shapes | contexts: pipeline.contexts
    # contexts only (pipeline.contexts):
    contexts: int = setting(4, ge=1)  # seeded contexts of the world, each with its frequencies and pairs
    world_seed: int = setting(0)  # the world's contexts: the same for the teacher's scenes and the dataset's
    partner_prob: float = setting(0.8, ge=0.0, le=1.0)  # a co-occurring pair's partner joins with this probability
    max_cover: float = setting(0.5, ge=0.0, le=1.0)  # objects' boxes share at most this of the smaller one's area
    min_visible: float = setting(0.4, ge=0.0, le=1.0)  # a small object is labelled if this share of it shows

    SECTION: ClassVar[str] = "dataset"

    def relation_errors(self) -> list[str]:
        if self.scenes == "simple" and self.n_classes > len(SHAPE_CLASSES):
            return [f"dataset.n_classes must be <= {len(SHAPE_CLASSES)} with dataset.scenes: simple (one class per "
                    f"shape; `contexts` scenes have up to {len(CONTEXT_CLASSES)}), got {self.n_classes}"]
        return []

    @property
    def classes(self) -> tuple[str, ...]:
        if self.scenes == "contexts":
            return CONTEXT_CLASSES[: self.n_classes]
        return SHAPE_CLASSES[: self.n_classes]


@dataclass
class Scene:
    image: np.ndarray  # uint8 [H, W, 3]
    labels: np.ndarray  # int8 [C], 1 present
    salient: int  # class index of the salient object
    object_map: np.ndarray  # int16 [H, W]: index into `classes_of_objects`, -1 background
    object_classes: list[int]  # class of each object, salient first


def shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape over box coordinates u, v in [-1, 1]."""
    r = np.sqrt(u**2 + v**2)
    if name == "circle":
        return r <= 1.0
    if name == "square":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if name == "triangle":  # apex up
        return (v <= 0.9) & (v >= -0.9) & (np.abs(u) <= (v + 0.9) / 1.8 * 0.95)
    if name == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if name == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if name == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if name == "frame":
        outer = (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9)
        return outer & ~((np.abs(u) <= 0.5) & (np.abs(v) <= 0.5))
    if name == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.38)
    raise ValueError(f"unknown shape {name!r}")


def textured_gradient(rng: np.random.Generator, size: int, c0: np.ndarray, c1: np.ndarray,
                      texture: float) -> np.ndarray:
    """A size×size background: a linear gradient from colour c0 to c1 at a random angle, plus a
    low-frequency texture of amplitude `texture`. [size, size, 3] float"""
    angle = rng.uniform(0, 2 * np.pi)
    # x (columns) and y (rows) on one axis: each term below depends on one of them, so it is computed once per
    # row or column and broadcast, the same floating-point operations per pixel as on the full grids
    axis = np.arange(size) / max(size - 1, 1)
    x, y = axis[None, :], axis[:, None]
    t = np.cos(angle) * x + np.sin(angle) * y
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    freq = rng.uniform(2, 5, size=2)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    wave = texture * np.sin(2 * np.pi * freq[0] * x + phase[0]) * np.sin(2 * np.pi * freq[1] * y + phase[1])
    return c0 + (c1 - c0) * t[..., None] + wave[..., None]


def finish_image(rng: np.random.Generator, canvas: np.ndarray, image_size: int, noise: float) -> np.ndarray:
    """The supersampled canvas box-filtered down to image_size, with pixel noise of std `noise`. uint8"""
    img = canvas.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE, 3).mean((1, 3))
    img = img + rng.normal(0, noise, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)

