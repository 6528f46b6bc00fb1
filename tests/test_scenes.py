import numpy as np

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
