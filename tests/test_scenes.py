import numpy as np

from pipeline.scene_config import textured_gradient
from pipeline.scenes import SHAPE_CLASSES, SceneConfig, dominant_object, render_scene, scene_rng, shape_mask


def test_scene_is_deterministic_per_seed_stream_index():
    cfg = SceneConfig()
    a = render_scene(scene_rng(3, 0, 7), cfg)
    b = render_scene(scene_rng(3, 0, 7), cfg)
    c = render_scene(scene_rng(3, 1, 7), cfg)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)


def test_labels_match_objects_and_salient_is_largest():
    cfg = SceneConfig()
    for i in range(60):
        s = render_scene(scene_rng(0, 0, i), cfg)
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert s.labels[s.salient] == 1
        assert set(np.flatnonzero(s.labels)) == set(s.object_classes)
        assert len(set(s.object_classes)) == len(s.object_classes)  # each class at most once
        areas = np.bincount(s.object_map[s.object_map >= 0], minlength=len(s.object_classes))
        assert areas[0] == areas.max() and areas.min() > 0  # every object visible, salient largest


def test_small_objects_never_touch_salient():
    cfg = SceneConfig()
    for i in range(40):
        s = render_scene(scene_rng(1, 0, i), cfg)
        ys, xs = np.nonzero(s.object_map == 0)
        for k in range(1, len(s.object_classes)):
            ky, kx = np.nonzero(s.object_map == k)
            overlap_x = kx.min() <= xs.max() and xs.min() <= kx.max()
            overlap_y = ky.min() <= ys.max() and ys.min() <= ky.max()
            assert not (overlap_x and overlap_y)


def test_shape_masks_differ():
    v, u = np.mgrid[-1:1:64j, -1:1:64j]
    masks = [shape_mask(n, u, v) for n in SHAPE_CLASSES]
    for i in range(len(masks)):
        assert masks[i].sum() > 100
        for j in range(i):
            assert (masks[i] != masks[j]).sum() > 100


def test_dominant_object_needs_min_fraction():
    object_map = np.full((10, 10), -1, dtype=np.int16)
    object_map[0:2, 0:2] = 0  # 4 px
    object_map[5:10, 5:10] = 1  # 25 px
    assert dominant_object(object_map, (0, 0, 10, 10), 0.1) == 1
    assert dominant_object(object_map, (0, 0, 4, 4), 0.2) == 0
    assert dominant_object(object_map, (0, 0, 4, 4), 0.5) == -1
    assert dominant_object(object_map, (2, 2, 4, 4), 0.0) == -1


def test_n_classes_limits_classes():
    cfg = SceneConfig(n_classes=3)
    for i in range(20):
        s = render_scene(scene_rng(0, 0, i), cfg)
        assert s.labels.shape == (3,) and max(s.object_classes) < 3


def test_textured_gradient_equals_the_full_grid_formula_bit_for_bit():
    """The background is computed per row and column and broadcast (speed); every pixel must be the one the
    full-grid formula gives, so a dataset's images never change with that choice."""
    for size in (1, 2, 7, 128):
        c0, c1 = np.array([40.0, 120.0, 215.0]), np.array([200.0, 50.0, 90.0])
        fast = textured_gradient(np.random.default_rng(size), size, c0, c1, texture=12.0)
        rng = np.random.default_rng(size)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        freq, phase = rng.uniform(2, 5, size=2), rng.uniform(0, 2 * np.pi, size=2)
        wave = 12.0 * np.sin(2 * np.pi * freq[0] * xx + phase[0]) * np.sin(2 * np.pi * freq[1] * yy + phase[1])
        full = c0 + (c1 - c0) * t[..., None] + wave[..., None]
        assert fast.shape == (size, size, 3)
        assert fast.tobytes() == full.tobytes()
