"""The `contexts` scenes of the embedded benchmark: a world with the structure partial-label methods exploit.

Real multi-label data is structured (person + bicycle, table + chair, sky + clouds); the `simple` scenes
are not (objects are drawn independently, one class per shape). Here (docs/design.md#the-contexts-scenes):

- Classes are shape × colour family ("red circle", "blue circle", …): neither attribute alone tells them
  apart, and the families' hues, saturations and brightnesses vary within a family.
- A world of `contexts` seeded contexts (from `world_seed`, the same for the teacher's scenes and the
  dataset's). Each context has its own class frequencies (a world-wide long tail, Zipf-like, with each
  context's own home classes boosted), its own clutter (mean small objects per scene) and its own
  co-occurring pairs: when a pair's first class is in a scene, its partner joins with probability
  `partner_prob` (room permitting: at most 1 + max_small objects).
- Objects overlap: boxes may share up to `max_cover` of the smaller one's area, and the depth order is
  random, so a small object hides part of the salient one or hides behind it; a small object's label is
  present only if at least `min_visible` of its pixels stay visible.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipeline.scene_config import (
    COLOUR_FAMILIES,
    SHAPE_CLASSES,
    SUPERSAMPLE,
    Scene,
    SceneConfig,
    finish_image,
    shape_mask,
    textured_gradient,
)

HUE_JITTER = 0.06  # ± of the hue circle around a family's centre
ZIPF_EXPONENT = 1.1  # world-wide class popularity ∝ rank^-s: the long tail
HOME_BOOST = 6.0  # a context's home classes are this much likelier in it
PAIRS_PER_CONTEXT = 3
WORLD_STREAM = 7  # seed stream of the world (contexts), apart from every scene stream


@dataclass(frozen=True)
class Context:
    frequencies: np.ndarray  # [C] probabilities of each class in this context
    clutter: float  # mean number of small objects
    pairs: tuple[tuple[int, int], ...]  # (a, b): b joins a scene that has a, with probability partner_prob


@lru_cache(maxsize=8)
def make_world(n_classes: int, contexts: int, world_seed: int) -> tuple[Context, ...]:
    """The contexts of the world: a pure function of its arguments."""
    rng = np.random.default_rng(np.random.SeedSequence([world_seed, WORLD_STREAM, n_classes, contexts]))
    popularity = np.empty(n_classes)
    popularity[rng.permutation(n_classes)] = (np.arange(n_classes) + 1.0) ** -ZIPF_EXPONENT
    world = []
    for _ in range(contexts):
        home = rng.choice(n_classes, size=max(2, n_classes // contexts), replace=False)
        freq = popularity.copy()
        freq[home] *= HOME_BOOST
        pairs = []
        for _ in range(PAIRS_PER_CONTEXT):  # partners among the home classes: what co-occurs is what is there
            a, b = rng.choice(home, size=2, replace=False)
            pairs.append((int(a), int(b)))
        world.append(Context(freq / freq.sum(), float(rng.uniform(1.0, 3.0)), tuple(pairs)))
    return tuple(world)


def family_colour(rng: np.random.Generator, family: int) -> np.ndarray:
    """An RGB colour (0..255) of colour family `family`: its hue ± HUE_JITTER, any fairly strong saturation
    and brightness."""
    hue = (COLOUR_FAMILIES[family][1] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.5, 1.0))) * 255.0


def grey_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth gradient between two greyish colours with a low-frequency texture: no colour family's hue."""
    grey = rng.uniform(50, 205, size=2)
    tint = rng.uniform(-12, 12, size=(2, 3))
    return textured_gradient(rng, size, grey[0] + tint[0], grey[1] + tint[1], texture=10.0)


def scene_classes(rng: np.random.Generator, context: Context, max_small: int, partner_prob: float) -> list[int]:
    """The classes of one scene, salient first: the salient one and the clutter by the context's frequencies,
    then the partner of each pair whose first class is there (with partner_prob), up to 1 + max_small."""
    n_classes = len(context.frequencies)
    chosen = [int(rng.choice(n_classes, p=context.frequencies))]
    n_small = min(max_small, int(rng.poisson(context.clutter)))
    while len(chosen) < 1 + n_small:
        rest = context.frequencies.copy()
        rest[chosen] = 0.0
        if rest.sum() <= 0:
            break
        chosen.append(int(rng.choice(n_classes, p=rest / rest.sum())))
    for a, b in context.pairs:
        if len(chosen) < 1 + max_small and a in chosen and b not in chosen and rng.random() < partner_prob:
            chosen.append(b)
    return chosen


def _overlap_ok(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]], max_cover: float) -> bool:
    """Whether `box` covers at most max_cover of each taken box and is covered by them at most as much."""
    x0, y0, x1, y1 = box
    for t in taken:
        inter = max(0, min(x1, t[2]) - max(x0, t[0])) * max(0, min(y1, t[3]) - max(y0, t[1]))
        smaller = min((x1 - x0) * (y1 - y0), (t[2] - t[0]) * (t[3] - t[1]))
        if inter > max_cover * smaller:
            return False
    return True


def render_context_scene(rng: np.random.Generator, cfg: SceneConfig) -> Scene:
    """Draw one `contexts` scene. All randomness comes from `rng`; the world from cfg.world_seed."""
    world = make_world(cfg.n_classes, cfg.contexts, cfg.world_seed)
    context = world[int(rng.integers(len(world)))]
    plan = scene_classes(rng, context, cfg.max_small, cfg.partner_prob)
    s = cfg.image_size * SUPERSAMPLE
    canvas = grey_background(rng, s)
    object_map = np.full((s, s), -1, dtype=np.int16)
    boxes: list[tuple[int, int, int, int]] = []
    masks: list[np.ndarray] = []
    kept: list[int] = []
    for k, cls in enumerate(plan):
        lo, hi = cfg.salient_size if k == 0 else cfg.small_size
        side = max(4, int(round(rng.uniform(lo, hi) * s)))
        for _ in range(60):
            x, y = int(rng.integers(0, s - side + 1)), int(rng.integers(0, s - side + 1))
            box = (x, y, x + side, y + side)
            if _overlap_ok(box, boxes, cfg.max_cover):
                break
        else:
            continue  # no room left: the scene has fewer objects
        x0, y0, x1, y1 = box
        vv, uu = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        mask = np.zeros((s, s), dtype=bool)
        u, v = (uu + 0.5 - (x0 + x1) / 2) / (side / 2), ((y0 + y1) / 2 - (vv + 0.5)) / (side / 2)
        mask[y0:y1, x0:x1] = shape_mask(SHAPE_CLASSES[cls % len(SHAPE_CLASSES)], u, v)
        boxes.append(box)
        masks.append(mask)
        kept.append(cls)
    # Depth order: the salient object at a random depth among the others, each of them in front or behind.
    order = rng.permutation(len(kept))
    for i in order:
        canvas[masks[i]] = family_colour(rng, kept[i] // len(SHAPE_CLASSES))
        object_map[masks[i]] = i
    # A small object mostly hidden is not in the label set (the salient one, the largest, always shows).
    visible = [(object_map[masks[i]] == i).mean() for i in range(len(kept))]
    present = [0, *(i for i in range(1, len(kept)) if visible[i] >= cfg.min_visible)]
    remap = np.full(len(kept) + 1, -1, dtype=np.int16)  # hidden objects leave the object map
    for new, old in enumerate(present):
        remap[old] = new
    object_map = np.where(object_map >= 0, remap[object_map], -1).astype(np.int16)

    image = finish_image(rng, canvas, cfg.image_size, cfg.noise)
    labels = np.zeros(cfg.n_classes, dtype=np.int8)
    object_classes = [kept[i] for i in present]
    labels[object_classes] = 1
    return Scene(image=image, labels=labels, salient=kept[0],
                 object_map=object_map[::SUPERSAMPLE, ::SUPERSAMPLE].copy(), object_classes=object_classes)
