"""The embedded benchmark: seeded multi-object scenes with exact ground truth.

`dataset.scenes: simple` (here): each scene has one large salient object and 0..max_small small objects of
other classes that never overlap it, on a smooth textured background with faint noise. Colours are random,
shapes are never rotated: a clean world in which a small CLIP-style model learns fast
(docs/design.md#the-embedded-benchmark).
`dataset.scenes: contexts` (pipeline.contexts): shape × colour classes in contexts with co-occurrence,
occlusion and a long tail, the structure partial-label methods exploit.
"""

from __future__ import annotations

import numpy as np

from pipeline.contexts import render_context_scene
from pipeline.scene_config import (
    SHAPE_CLASSES,
    SUPERSAMPLE,
    Scene,
    SceneConfig,
    finish_image,
    shape_mask,
    textured_gradient,
)

__all__ = ["SHAPE_CLASSES", "Scene", "SceneConfig", "dominant_object", "render_scene", "scene_rng", "shape_mask"]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth two-colour gradient with a low-frequency texture."""
    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    return textured_gradient(rng, size, c0, c1, texture=12.0)


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
    """Draw one scene of cfg.scenes. All randomness comes from `rng`."""
    if cfg.scenes == "contexts":
        return render_context_scene(rng, cfg)
    return render_simple_scene(rng, cfg)


def render_simple_scene(rng: np.random.Generator, cfg: SceneConfig) -> Scene:
    """Draw one `simple` scene: independent objects, none overlapping. All randomness comes from `rng`."""
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
    image = finish_image(rng, canvas, cfg.image_size, cfg.noise)
    labels = np.zeros(n_cls, dtype=np.int8)
    labels[object_classes] = 1
    return Scene(
        image=image,
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
