import numpy as np
import pytest

from pipeline.contexts import make_world, scene_classes
from pipeline.label_stats import label_statistics, statistics_lines
from pipeline.scenes import SceneConfig, render_scene, scene_rng

CONTEXTS = SceneConfig(scenes="contexts", n_classes=16, max_small=4)


def _scenes(cfg: SceneConfig, n: int, seed: int = 0):
    return [render_scene(scene_rng(seed, 0, i), cfg) for i in range(n)]


def test_contexts_scenes_are_deterministic_and_the_world_is_the_same_for_every_stream():
    a, b = render_scene(scene_rng(3, 0, 7), CONTEXTS), render_scene(scene_rng(3, 0, 7), CONTEXTS)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    fresh = make_world.__wrapped__  # uncached: the world is a pure function of its settings
    for x, y in zip(fresh(16, 4, 0), fresh(16, 4, 0), strict=True):
        assert x.pairs == y.pairs and x.clutter == y.clutter and np.array_equal(x.frequencies, y.frequencies)
    assert any(x.pairs != y.pairs for x, y in zip(fresh(16, 4, 0), fresh(16, 4, 1), strict=True))


def test_classes_are_shape_times_colour_and_need_both_attributes():
    assert len(CONTEXTS.classes) == 16 and CONTEXTS.classes[0] == "red circle" and CONTEXTS.classes[8] == "blue circle"
    for s in _scenes(CONTEXTS, 40):
        for k, cls in enumerate(s.object_classes):  # each object's pixels have its family's dominant channel
            pixels = s.image[s.object_map == k].astype(float)
            if len(pixels) >= 8:
                red, blue = pixels[:, 0].mean(), pixels[:, 2].mean()
                assert (red > blue) == (cls < 8), (cls, red, blue)
    with pytest.raises(ValueError, match="n_classes"):
        SceneConfig(n_classes=16)  # simple scenes have one class per shape


def test_labels_are_the_visible_objects_and_objects_occlude_each_other():
    occluded = 0
    for s in _scenes(CONTEXTS, 150):
        assert s.labels[s.salient] == 1 and s.object_classes[0] == s.salient
        assert sorted(np.flatnonzero(s.labels)) == sorted(s.object_classes)
        assert set(np.unique(s.object_map)) <= set(range(-1, len(s.object_classes)))
        for k in range(len(s.object_classes)):
            ys, xs = np.nonzero(s.object_map == k)
            assert ys.size  # every labelled object shows
            box = s.object_map[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            occluded += int(((box >= 0) & (box != k)).any())
    assert occluded >= 30  # many objects have another drawn over or under their box


def test_contexts_carry_co_occurrence_and_a_long_tail_the_simple_scenes_do_not():
    n = 600
    ctx = label_statistics(np.stack([s.labels for s in _scenes(CONTEXTS, n)]), list(CONTEXTS.classes))
    simple_cfg = SceneConfig()
    simple = label_statistics(np.stack([s.labels for s in _scenes(simple_cfg, n)]), list(simple_cfg.classes))
    assert ctx.tail_ratio > 5 and simple.tail_ratio < 1.5
    assert ctx.top_pairs(1)[0][3] > 2.5 and simple.top_pairs(1)[0][3] < 1.5
    # every context's pairs show up: P(b | a) well above P(b)
    world = make_world(16, CONTEXTS.contexts, CONTEXTS.world_seed)
    lifted = [ctx.lift[b, a] for context in world for a, b in context.pairs if ctx.frequency[a] > 0.02]
    assert np.median(lifted) > 1.5
    assert ctx.labels_per_image[1:].sum() == n and len(ctx.labels_per_image) <= 1 + 1 + CONTEXTS.max_small


def test_scene_classes_follow_partners_and_clutter():
    rng = np.random.default_rng(0)
    context = make_world(16, 4, 0)[0]
    a, b = context.pairs[0]
    with_a = [c for c in (scene_classes(rng, context, 4, 1.0) for _ in range(400)) if a in c[:-1]]
    assert len(with_a) > 20 and all(b in c or len(c) == 5 for c in with_a)  # partner_prob 1: joins if there is room
    assert all(len(set(c)) == len(c) <= 5 for c in (scene_classes(rng, context, 4, 0.8) for _ in range(200)))


def test_statistics_lines_name_frequencies_labels_per_image_and_pairs():
    labels = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1]] * 5)
    stats = label_statistics(labels, ["a", "b", "c"])
    assert stats.frequency.tolist() == [0.75, 0.5, 0.25]
    assert stats.cooccurrence[1, 0] == pytest.approx(2 / 3) and stats.cooccurrence[0, 1] == 1.0
    assert stats.labels_per_image.tolist() == [0, 10, 10]
    assert stats.top_pairs(1)[0][:2] == ("a", "b")  # lift 1 / 0.75 beats b | a's (2/3) / 0.5
    lines = statistics_lines(stats)
    assert "a 0.75, b 0.50, c 0.25" in lines[0] and "tail ratio 3.0" in lines[0]
    assert "mean 1.50" in lines[1] and "a | b 1.00 ×1.3" in lines[2]
