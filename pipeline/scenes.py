"""The embedded benchmark: seeded multi-object scenes with exact ground truth.

Each scene has one large salient object and 0..max_small small objects of other classes that never
overlap it, on a smooth textured background with faint noise. Colours are random, shapes are never
rotated: a clean world in which a small CLIP-style model learns fast (docs/design.md#the-embedded-benchmark).
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


@dataclass(frozen=True)
class SceneConfig(Settings):
    """The embedded benchmark's scenes: section `dataset` (prepare renders them, the toy teacher trains on them)."""

    image_size: int = setting(64, ge=16)
    salient_size: tuple[float, float] = setting((0.45, 0.65), gt=0.0, le=1.0, pair=True)  # side / canvas side
    small_size: tuple[float, float] = setting((0.17, 0.25), gt=0.0, le=1.0, pair=True)
    max_small: int = setting(3, ge=0, le=5)
    noise: float = setting(6.0, ge=0.0)  # std of pixel noise, in 0..255 units
    n_classes: int = setting(len(SHAPE_CLASSES), ge=2, le=len(SHAPE_CLASSES))  # the first n shapes of SHAPE_CLASSES

    SECTION: ClassVar[str] = "dataset"

    @property
    def classes(self) -> tuple[str, ...]:
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


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth two-colour gradient with a low-frequency texture."""
    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    freq = rng.uniform(2, 5, size=2)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    texture = 12.0 * np.sin(2 * np.pi * freq[0] * xx + phase[0]) * np.sin(2 * np.pi * freq[1] * yy + phase[1])
    img = c0 + (c1 - c0) * t[..., None] + texture[..., None]
    return img


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour far enough from the mean background colour under the object."""
    for _ in range(50):
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - under).sum() > 180:
            return colour
    return 255.0 - under


def _place(rng, size_px: int, canvas: int, taken: list[tuple[int, int, int, int]], margin: int):
    """A random top-left corner for a square box that does not touch any taken box."""
    for _ in range(60):
        x = int(rng.integers(0, canvas - size_px + 1))
        y = int(rng.integers(0, canvas - size_px + 1))
        box = (x, y, x + size_px, y + size_px)
        if all(box[2] + margin <= t[0] or t[2] + margin <= box[0] or box[3] + margin <= t[1]
               or t[3] + margin <= box[1] for t in taken):
            return box
    return None


def render_scene(rng: np.random.Generator, cfg: SceneConfig) -> Scene:
    """Draw one scene. All randomness comes from `rng`."""
    classes = cfg.classes
    n_cls = len(classes)
    s = cfg.image_size * SUPERSAMPLE
    canvas = _background(rng, s)
    object_map = np.full((s, s), -1, dtype=np.int16)
    salient = int(rng.integers(n_cls))
    others = [c for c in rng.permutation(n_cls).tolist() if c != salient]
    n_small = int(rng.integers(0, cfg.max_small + 1))
    plan = [(salient, cfg.salient_size)] + [(c, cfg.small_size) for c in others[:n_small]]

    taken: list[tuple[int, int, int, int]] = []
    object_classes: list[int] = []
    for cls, (lo, hi) in plan:
        side = max(4, int(round(rng.uniform(lo, hi) * s)))
        box = _place(rng, side, s, taken, margin=2 * SUPERSAMPLE)
        if box is None:
            continue  # no room left: the scene simply has fewer small objects
        x0, y0, x1, y1 = box
        taken.append(box)
        vv, uu = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        u = (uu + 0.5 - (x0 + x1) / 2) / (side / 2)
        v = ((y0 + y1) / 2 - (vv + 0.5)) / (side / 2)
        mask = shape_mask(classes[cls], u, v)
        colour = _contrasting_colour(rng, canvas[y0:y1, x0:x1].reshape(-1, 3).mean(0))
        canvas[y0:y1, x0:x1][mask] = colour
        object_map[y0:y1, x0:x1][mask] = len(object_classes)
        object_classes.append(cls)

    # Downsample: box filter for the image, nearest (top-left sample) for the object map.
    img = canvas.reshape(cfg.image_size, SUPERSAMPLE, cfg.image_size, SUPERSAMPLE, 3).mean((1, 3))
    img = img + rng.normal(0, cfg.noise, size=img.shape)
    labels = np.zeros(n_cls, dtype=np.int8)
    labels[object_classes] = 1
    return Scene(
        image=np.clip(np.round(img), 0, 255).astype(np.uint8),
        labels=labels,
        salient=salient,
        object_map=object_map[::SUPERSAMPLE, ::SUPERSAMPLE].copy(),
        object_classes=object_classes,
    )


def scene_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """Independent generator per (seed, stream, index): scene i is the same whatever else is drawn."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def dominant_object(object_map: np.ndarray, box: tuple[int, int, int, int], min_fraction: float) -> int:
    """Index of the object with most visible pixels inside box (x0, y0, x1, y1), or -1.

    An object only dominates if its visible pixels cover at least `min_fraction` of the crop.
    """
    x0, y0, x1, y1 = box
    window = object_map[y0:y1, x0:x1]
    ids = window[window >= 0]
    if ids.size == 0:
        return -1
    counts = np.bincount(ids)
    best = int(counts.argmax())
    return best if counts[best] >= min_fraction * window.size else -1
