import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import clip
from pipeline.adapter import adapter_for
from pipeline.em import EmPlan, e_step, predict_hosts, train_adapter_em
from pipeline.methods import RULES
from pipeline.plmcl import Plmcl
from pipeline.sew import (
    SewDataset,
    SewSettings,
    composite_logits,
    covered_share,
    feather_mask,
    overlay_count,
    overlay_pool,
    overlay_pool_pairs,
    paste_size,
    sew,
)
from tests.conftest import make_rule


def test_overlay_pool_top_k_per_class_deduplicated():
    z0 = np.array([[5.0, 0.0], [4.0, 1.0], [0.0, 6.0], [1.0, 5.0], [3.0, 3.0]])
    assert overlay_pool(z0, 2).tolist() == [0, 1, 2, 3]
    assert overlay_pool(z0, 3).tolist() == [0, 1, 2, 3, 4]  # row 4 is in both top-3s, listed once
    assert overlay_pool(z0, 99).tolist() == [0, 1, 2, 3, 4]
    # as (image, class) pairs: row 4 is pooled once for each class it tops
    assert overlay_pool_pairs(z0, 3).tolist() == [[0, 0], [1, 0], [4, 0], [2, 1], [3, 1], [4, 1]]


def test_pool_size_follows_n_and_c():
    # the paper's k = 200 pools every image of a 1,000-image, 8-class set: no iconic pool is left
    z0 = np.random.default_rng(0).normal(size=(1000, 8))
    z0[np.arange(1000), np.arange(1000) % 8] += 6  # each image iconic for one class, 125 per class
    assert len(overlay_pool(z0, 200)) == 1000
    s = SewSettings()  # k = ⌈0.25 · N / C⌉
    assert s.pool_size(1000, 8) == 32 and s.pool_size(5000, 20) == 63 and s.pool_size(3, 8) == 1
    pool = overlay_pool(z0, s.pool_size(1000, 8))
    assert len(pool) == 8 * 32 and (z0[pool].argmax(1) == pool % 8).all()  # iconic images only
    assert SewSettings(pool_k=200).pool_size(1000, 8) == 200


def test_overlay_count_is_capped_geometric():
    rng = np.random.default_rng(0)
    assert {overlay_count(rng, 0.9, 0) for _ in range(50)} == {0}
    assert {overlay_count(rng, 0.0, 3) for _ in range(50)} == {0}
    counts = np.array([overlay_count(rng, 0.5, 3) for _ in range(4000)])
    assert counts.max() == 3
    assert np.mean(counts == 0) == pytest.approx(0.5, abs=0.03)
    assert np.mean(counts == 1) == pytest.approx(0.25, abs=0.03)
    assert np.mean(counts == 3) == pytest.approx(0.125, abs=0.03)  # 2 and more, capped


def test_paste_size_keeps_aspect_in_q_over_sqrt_n_box():
    assert paste_size(20, 40, 64, 0.5, 1) == (16, 32)
    assert paste_size(20, 40, 64, 0.5, 4) == (8, 16)
    assert paste_size(40, 40, 64, 1.0, 1) == (64, 64)


def test_sew_pastes_each_overlay_inside_the_host():
    host = torch.zeros(3, 64, 64, dtype=torch.uint8)
    ov = torch.full((3, 20, 40), 255, dtype=torch.uint8)
    out, rects = sew(host, [ov], np.random.default_rng(0), q=0.5)
    assert host.sum() == 0  # the host is not modified in place
    assert (out == 255).sum().item() == 3 * 16 * 32
    ys, xs = torch.nonzero(out[0] == 255, as_tuple=True)
    assert ys.max() - ys.min() + 1 == 16 and xs.max() - xs.min() + 1 == 32
    (x0, y0, x1, y1), = rects
    assert (x0 * 64, y0 * 64, x1 * 64, y1 * 64) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_feathered_paste_has_no_box_edges():
    host = torch.zeros(3, 64, 64, dtype=torch.uint8)
    ov = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    out, ((x0, y0, x1, y1),) = sew(host, [ov], np.random.default_rng(0), q=0.5, paste="feather")
    c0, r0, c1, r1 = (int(round(v * 64)) for v in (x0, y0, x1, y1))
    box = out[0, r0:r1, c0:c1]
    assert box[0, 0] == 0 and box[-1, -1] == 0  # the box's corners keep the host
    assert box[16, 16] == 255  # its centre is the overlay
    assert (out[0] > 0).sum() < 0.8 * 32 * 32  # a soft ellipse, not the square
    m = feather_mask(20, 40)
    assert m.shape == (20, 40) and float(m.max()) == 1.0 and float(m[0, 0]) == 0.0


def test_overlay_goes_where_it_covers_least_and_covered_host_labels_are_hidden():
    # the host's class-0 object fills its left half; class 1 is unlikely (weight 0)
    boxes = np.array([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]], np.float32)
    weights = np.array([1.0, 0.0], np.float32)
    host = torch.zeros(3, 64, 64, dtype=torch.uint8)
    ov = torch.full((3, 32, 32), 255, dtype=torch.uint8)

    def cover(tries: int, seed: int) -> float:
        _, (rect,) = sew(host, [ov], np.random.default_rng(seed), 0.5, boxes, weights, tries=tries)
        return float(covered_share(boxes, rect)[0])

    assert np.mean([cover(1, s) for s in range(30)]) > 0.2  # a random position covers about a quarter of it
    assert np.mean([cover(16, s) for s in range(30)]) < 0.02  # the best of 16 goes to the right half
    assert covered_share(boxes, (0.0, 0.0, 0.5, 0.5)).tolist() == [0.5, 0.0]


def test_composite_label_with_pooled_overlays_and_hidden_host_labels():
    z = torch.tensor([[1.0, -2.0, 0.5], [4.0, 3.0, -1.0]])
    sources = torch.tensor([[0, 1]])
    # the overlay (row 1) was pooled for class 1: it labels class 1 only, not its class 0
    assert composite_logits(z, sources, torch.tensor([[-1, 1]])).tolist() == [[1.0, 3.0, 0.5]]
    assert composite_logits(z, sources).tolist() == [[4.0, 3.0, 0.5]]  # eq. 13: every label
    from pipeline.sew import max_over_sources
    hidden = torch.tensor([[True, False, False]])  # the host's class 0 is covered
    out = max_over_sources(z[sources], sources, torch.tensor([[-1, 1]]), hidden)
    assert out[0, 0].item() == float("-inf") and out[0, 1:].tolist() == [3.0, 0.5]


def test_composite_label_is_elementwise_max_and_routes_gradient_to_the_argmax_source():
    z = torch.tensor([[1.0, -2.0], [0.0, 3.0], [-1.0, -1.0]], requires_grad=True)
    sources = torch.tensor([[0, 1, -1], [2, -1, -1]])
    out = composite_logits(z, sources)
    assert out.tolist() == [[1.0, 3.0], [-1.0, -1.0]]
    out.sum().backward()
    assert z.grad.tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("sew")
    paths = []
    for i in range(10):
        p = root / f"{i}.png"
        Image.fromarray(np.full((24, 24, 3), 20 * i, np.uint8)).save(p)
        paths.append(p)
    return paths


def test_dataset_is_seeded_per_epoch_and_L0_disables_sewing(image_paths):
    s = SewSettings(overlay_prob=0.9, max_overlays=2, seed=3)
    ds = SewDataset(image_paths, 32, np.arange(10), s)
    a_img, a_src, _, _ = ds[4]
    b_img, b_src, _, _ = ds[4]
    assert torch.equal(a_img, b_img) and torch.equal(a_src, b_src) and a_img.shape == (3, 32, 32)
    assert a_src[0] == 4 and len(a_src) == 3
    ds.epoch = 1
    assert any(not torch.equal(ds[i][1], SewDataset(image_paths, 32, np.arange(10), s)[i][1]) for i in range(10))
    plain = SewDataset(image_paths, 32, np.arange(10), SewSettings(overlay_prob=0.9, max_overlays=0))
    img, src, _, _ = plain[4]
    assert src.tolist() == [4] and torch.equal(img, torch.full((3, 32, 32), 80, dtype=torch.uint8))


def test_plain_epochs_train_the_last_epochs_without_overlays(image_paths):
    s = SewSettings(overlay_prob=0.9, max_overlays=2, epochs=4, plain_epochs=2, seed=3)
    ds = SewDataset(image_paths, 32, np.arange(10), s)
    overlays = []
    for epoch in range(4):
        ds.epoch = epoch
        overlays.append(sum(int((ds[i][1][1:] >= 0).sum()) for i in range(10)))
    assert overlays[0] > 0 and overlays[1] > 0 and overlays[2:] == [0, 0]
    assert torch.equal(ds[4][0], ds.load(4))  # the plain image itself
    with pytest.raises(ValueError, match="sew.plain_epochs must be in"):
        SewSettings(epochs=2, plain_epochs=3)


def test_em_training_moves_free_entries_only(tiny_model, image_paths):
    torch.manual_seed(0)
    adapter = adapter_for(tiny_model, 3, 32, hidden=16, heads=2)
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    z = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    frozen[:3] = True
    s = SewSettings(epochs=2, batch_size=4, max_overlays=1, estimator_lr=0.05)
    ds = SewDataset(image_paths, 32, np.arange(10), s)
    refined = train_adapter_em(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, z, frozen, s)
    assert np.array_equal(refined[:3], z[:3]) and not np.allclose(refined[3:], z[3:])
    assert any(not torch.equal(before[k], v) for k, v in adapter.state_dict().items())
    for fixed_z in (SewSettings(epochs=1, batch_size=4, e_weight=0.0),
                    SewSettings(epochs=1, batch_size=4, e_step="backprop", estimator_lr=0.0)):
        fixed = train_adapter_em(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, z,
                                 np.zeros_like(frozen), fixed_z)
        assert np.array_equal(fixed, z)


def test_e_step_moves_z_towards_the_adapter_enough_to_reorder(tiny_model, image_paths):
    torch.manual_seed(0)
    adapter = adapter_for(tiny_model, 3, 32, hidden=16, heads=2)
    z = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    frozen[0] = True
    s = SewSettings(epochs=1, batch_size=4, max_overlays=1, e_weight=0.6)
    ds = SewDataset(image_paths, 32, np.arange(10), s)
    refined = train_adapter_em(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, z, frozen, s)
    p = predict_hosts(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, 4)
    expected = e_step(z, p, 0.6)  # (1 − w)·Z + w·P, anchored to the initial Z
    assert np.allclose(refined[1:], expected[1:], atol=1e-5) and np.array_equal(refined[0], z[0])
    assert e_step(np.array([[2.0, 0.0]]), np.array([[-2.0, 4.0]]), 0.5).tolist() == [[0.0, 2.0]]
    # where the adapter disagrees, a class's entries reorder: EM refines, it does not only shrink
    z_col, p_col = np.array([[3.0], [1.0], [-1.0]]), np.array([[-4.0], [0.0], [4.0]])
    assert np.argsort(-e_step(z_col, p_col, 0.6)[:, 0]).tolist() == [2, 1, 0]


def test_e_rounds_spread_e_steps_and_later_epochs_learn_from_the_refined_labels(tiny_model, image_paths):
    assert SewSettings(epochs=8, e_rounds=1).e_step_epochs == (8,)
    assert SewSettings(epochs=8, e_rounds=2).e_step_epochs == (4, 8)
    assert SewSettings(epochs=5, e_rounds=3).e_step_epochs == (2, 4, 5)
    z = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    runs = {}
    for rounds in (1, 2):
        torch.manual_seed(0)
        adapter = adapter_for(tiny_model, 3, 32, hidden=16, heads=2)
        s = SewSettings(epochs=2, batch_size=4, max_overlays=1, e_weight=0.6, e_rounds=rounds)
        ds = SewDataset(image_paths, 32, np.arange(10), s)
        refined = train_adapter_em(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, z, frozen, s)
        p = predict_hosts(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, 4)
        assert np.allclose(refined, e_step(z, p, 0.6), atol=1e-5)  # the last E-step is anchored to Z⁰ as ever
        runs[rounds] = p
    assert not np.allclose(runs[1], runs[2])  # the second epoch trained on other targets
    with pytest.raises(ValueError, match="e_rounds"):
        SewSettings(epochs=2, e_rounds=3)


def test_em_epochs_refine_early_and_train_on_the_refined_labels_after(tiny_model, image_paths):
    assert SewSettings(epochs=32, em_epochs=8).e_step_epochs == (8,)
    assert SewSettings(epochs=32, em_epochs=8, e_rounds=2).e_step_epochs == (4, 8)
    assert SewSettings(epochs=4, em_epochs=8).e_step_epochs == (4,)  # at most the epochs there are
    with pytest.raises(ValueError, match="e_rounds"):
        SewSettings(epochs=32, em_epochs=2, e_rounds=3)
    z = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    runs = {}
    for epochs, em in ((1, None), (3, 1)):
        torch.manual_seed(0)
        adapter = adapter_for(tiny_model, 3, 32, hidden=16, heads=2)
        s = SewSettings(epochs=epochs, em_epochs=em, batch_size=4, max_overlays=1, e_weight=0.6, lr_schedule="constant",
                        refined_from="em")
        ds = SewDataset(image_paths, 32, np.arange(10), s)
        refined = train_adapter_em(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, z, frozen, s)
        runs[epochs] = refined, predict_hosts(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, 4)
    # with refined_from: em the labels are those of the one-epoch run; the adapter trained two more epochs on them
    assert np.array_equal(runs[3][0], runs[1][0]) and not np.allclose(runs[3][1], runs[1][1])


def test_refined_from_final_mixes_the_final_adapter_into_z0_and_trains_the_same(tiny_model, image_paths):
    z = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    frozen[0] = True
    runs = {}
    for source in ("em", "final"):
        torch.manual_seed(0)
        adapter = adapter_for(tiny_model, 3, 32, hidden=16, heads=2)
        s = SewSettings(epochs=3, em_epochs=1, batch_size=4, max_overlays=1, e_weight=0.6, refined_from=source)
        ds = SewDataset(image_paths, 32, np.arange(10), s)
        refined = train_adapter_em(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, z, frozen, s)
        runs[source] = refined, predict_hosts(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, 4)
    (em, p_em), (final, p_final) = runs["em"], runs["final"]
    assert np.array_equal(p_em, p_final)  # the same training: only the labels written differ
    assert np.allclose(final[1:], e_step(z, p_final, 0.6)[1:], atol=1e-5) and np.array_equal(final[0], z[0])
    assert not np.allclose(final, em)  # em: the adapter of epoch 1 made them
    with pytest.raises(ValueError, match="refined_from"):
        SewSettings(refined_from="last")
    # where the last E-step came after the last epoch from the adapter's own predictions, it is the final one
    assert EmPlan.of(SewSettings(epochs=3, em_epochs=1), make_rule("none")).final_e_step
    assert not EmPlan.of(SewSettings(epochs=3, em_epochs=None), make_rule("none")).final_e_step
    assert not EmPlan.of(SewSettings(epochs=3, em_epochs=1, refined_from="em"), make_rule("none")).final_e_step
    assert EmPlan.of(SewSettings(epochs=3, em_epochs=None), Plmcl()).final_e_step  # that E-step took ŷ instead


@pytest.mark.parametrize("rule", RULES[1:])
def test_every_rule_keeps_known_labels_and_trains(tiny_model, image_paths, rule):
    torch.manual_seed(0)
    adapter = adapter_for(tiny_model, 3, 32, hidden=16, heads=2)
    z = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    frozen[::2, 0] = True
    s = SewSettings(epochs=2, batch_size=4, max_overlays=1)
    ds = SewDataset(image_paths, 32, np.arange(10), s)
    weights = np.full_like(z, 2.0) if rule == "label_distribution" else None
    refined = train_adapter_em(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, z, frozen, s,
                               rule=make_rule(rule), weights=weights)
    assert np.array_equal(refined[frozen], z[frozen]) and not np.allclose(refined[~frozen], z[~frozen])
    assert np.isfinite(refined).all()


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="sew.overlay_prob"):
        SewSettings(overlay_prob=1.0)
    with pytest.raises(ValueError, match="sew.overlay_side"):
        SewSettings(overlay_side=0.0)


def test_cosine_schedule_decays_the_adapter_lr_to_zero_over_all_steps():
    s = SewSettings(lr=0.002, lr_schedule="cosine")
    lrs = [s.adapter_lr(step, 100) for step in range(100)]
    assert lrs[0] == pytest.approx(0.002) and s.adapter_lr(50, 100) == pytest.approx(0.001)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False)) and lrs[-1] < 1e-6
    assert SewSettings(lr=0.002, lr_schedule="constant").adapter_lr(99, 100) == 0.002  # the paper's
    with pytest.raises(ValueError, match="lr_schedule"):
        SewSettings(lr_schedule="linear")


@pytest.mark.parametrize("unknown", ["ignore", "negative"])
@pytest.mark.parametrize("rule", ["none", "large_loss", "plmcl", "g2netpl"])
def test_the_papers_settings_never_read_the_pseudo_labels(tiny_model, image_paths, unknown, rule):
    """With unknown: ignore / negative the unknown entries' CLIP labels do not enter training: two runs whose
    z_init differ only there give the same adapter and labels; with unknown: pseudo they differ."""
    z = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    frozen[::2, 0] = frozen[1::3, 2] = True
    other = np.where(frozen, z, -z)  # other CLIP labels for every unknown entry
    s = SewSettings(epochs=3, batch_size=4, max_overlays=0)
    ds = SewDataset(image_paths, 32, np.arange(10), s)
    runs = {}
    for mode in (unknown, "pseudo"):
        for name, labels in (("z", z), ("other", other)):
            torch.manual_seed(0)
            adapter = adapter_for(tiny_model, 3, 32, hidden=16, heads=2)
            r = make_rule(rule, mode)
            refined = train_adapter_em(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, labels,
                                       frozen, s, rule=r)
            runs[mode, name] = refined, predict_hosts(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, 4)
    assert np.array_equal(runs[unknown, "z"][0], runs[unknown, "other"][0])
    assert np.array_equal(runs[unknown, "z"][1], runs[unknown, "other"][1])
    assert not np.allclose(runs["pseudo", "z"][1], runs["pseudo", "other"][1])
    refined, p = runs[unknown, "z"]
    assert np.array_equal(refined[frozen], z[frozen])
    if rule in ("none", "large_loss"):  # the method's labels of the unknown entries are the network's outputs
        assert np.allclose(refined[~frozen], p[~frozen], atol=1e-6)


def test_ignore_and_negative_train_differently(tiny_model, image_paths):
    z = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    frozen[::2, 0] = True
    s = SewSettings(epochs=2, batch_size=4, max_overlays=0)
    ds = SewDataset(image_paths, 32, np.arange(10), s)
    out = {}
    for unknown in ("ignore", "negative"):
        torch.manual_seed(0)
        adapter = adapter_for(tiny_model, 3, 32, hidden=16, heads=2)
        out[unknown] = train_adapter_em(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, z, frozen,
                                        s, rule=make_rule("none", unknown))
    # assume-negative pulls every unknown entry down; ignoring them leaves classes 1 and 2 (never known) untrained
    assert out["negative"][:, 1:].mean() < out["ignore"][:, 1:].mean() - 0.05


def test_with_pseudo_labels_a_rule_feeds_the_e_step(tiny_model, image_paths):
    """`unknown: pseudo`: PLMCL's ŷ (from the corrected labels) is the E-step's prediction, not the adapter's
    target every epoch. With η = 1 and no momentum ŷ is the last predictions themselves, so the refined labels
    are those of no rule; the default PLMCL smooths them into other labels."""

    z = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    frozen[::2, 0] = True
    s = SewSettings(epochs=3, em_epochs=2, batch_size=4, max_overlays=1, refined_from="em")  # the E-step's labels
    ds = SewDataset(image_paths, 32, np.arange(10), s)
    out = {}
    for name, rule in (("none", make_rule("none")), ("copy", Plmcl(eta=1.0, alpha=0.5, beta=0.5)),
                       ("plmcl", Plmcl())):
        torch.manual_seed(0)
        adapter = adapter_for(tiny_model, 3, 32, hidden=16, heads=2)
        out[name] = train_adapter_em(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, z, frozen, s,
                                     rule=rule)
    assert np.allclose(out["copy"], out["none"], atol=1e-3)
    assert not np.allclose(out["plmcl"], out["none"], atol=1e-2)
    assert np.array_equal(out["plmcl"][frozen], z[frozen])


def test_known_entries_weigh_known_weight_only_beside_pseudo_labels():
    from pipeline.em import EmState

    z = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    frozen[:2, 0] = True
    state = EmState.initial(z, frozen, paper=False, known_weight=3.0)
    assert torch.equal(state.known_weight, torch.where(torch.from_numpy(frozen), 3.0, 1.0))
    assert EmState.initial(z, frozen, paper=True, known_weight=3.0).known_weight is None  # the papers' losses
    assert EmState.initial(z, frozen, paper=False, known_weight=1.0).known_weight is None
    for nothing_or_all in (np.zeros_like(frozen), np.ones_like(frozen)):  # ratio 0, or the ceiling's true labels
        assert EmState.initial(z, nothing_or_all, paper=False, known_weight=3.0).known_weight is None


def test_known_weight_pulls_the_adapter_to_the_known_labels_and_changes_nothing_where_none_is_known(
        tiny_model, image_paths):
    """Class 0 is known present on half the images and pseudo-labelled absent on the other half: the adapter's
    class-0 probability follows the weighted share, ½ with equal weights, 8/9 with known_weight 8."""
    labels = np.random.default_rng(2).normal(size=(10, 3)).astype(np.float32)
    frozen = np.zeros_like(labels, bool)
    frozen[:5, 0] = True
    labels[:5, 0], labels[5:, 0] = 6.0, -6.0
    ds = SewDataset(image_paths, 32, np.arange(10), SewSettings(max_overlays=0))
    out, states = {}, {}
    for name, known, weight in (("k1", frozen, 1.0), ("k8", frozen, 8.0), ("none1", np.zeros_like(frozen), 1.0),
                                ("none8", np.zeros_like(frozen), 8.0)):
        s = SewSettings(epochs=3, batch_size=4, max_overlays=0, e_weight=0.0, lr=0.01, known_weight=weight)
        torch.manual_seed(0)
        adapter = adapter_for(tiny_model, 3, 32, hidden=16, heads=2)
        train_adapter_em(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, labels, known, s)
        out[name] = torch.sigmoid(torch.from_numpy(
            predict_hosts(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, 4))).numpy()
        states[name] = adapter.state_dict()
    assert out["k8"][:, 0].mean() > out["k1"][:, 0].mean() + 0.1
    assert all(torch.equal(states["none1"][k], states["none8"][k]) for k in states["none1"])  # bit for bit


def test_lambda_weighs_the_pseudo_labelled_entries_in_the_papers_settings_only():
    """PLMCL's and G2NetPL's λ (`weight`) is the BCE weight of an unknown entry trained on its pseudo label;
    known entries, and unknown ones not yet in the curriculum, keep weight 1; with `unknown: pseudo` λ is off."""
    from pipeline.em import EmState, composite_targets
    from pipeline.g2netpl import G2netpl
    from pipeline.plmcl import Plmcl

    z = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    frozen[:, 0] = True
    state = EmState.initial(z, frozen, paper=True)
    state.pseudo = torch.zeros(6, 3, dtype=torch.bool)
    state.pseudo[:4, 1:] = True  # the curriculum has taken four images' unknown entries
    sources = torch.arange(6)[:, None]
    expected = torch.ones(6, 3)
    expected[:4, 1:] = 0.1
    for rule in (Plmcl(unknown="ignore", weight=0.1), G2netpl(unknown="negative", weight=0.1)):
        _, _, _, w, _ = composite_targets(state, sources, None, None, None, rule)
        assert torch.equal(w, expected), rule
    assert composite_targets(state, sources, None, None, None, G2netpl(unknown="ignore"))[3] is None
    pseudo_state = EmState.initial(z, frozen, paper=False)
    assert composite_targets(pseudo_state, sources, None, None, None, G2netpl(weight=0.1))[3] is None
