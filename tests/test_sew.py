import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import clip
from pipeline.adapter import adapter_for
from pipeline.rules import RULES, RuleSettings
from pipeline.sew import (
    SewDataset,
    SewSettings,
    composite_logits,
    overlay_count,
    overlay_pool,
    paste_size,
    sew,
    train_adapter_em,
)


def test_overlay_pool_top_k_per_class_deduplicated():
    z0 = np.array([[5.0, 0.0], [4.0, 1.0], [0.0, 6.0], [1.0, 5.0], [3.0, 3.0]])
    assert overlay_pool(z0, 2).tolist() == [0, 1, 2, 3]
    assert overlay_pool(z0, 3).tolist() == [0, 1, 2, 3, 4]  # row 4 is in both top-3s, listed once
    assert overlay_pool(z0, 99).tolist() == [0, 1, 2, 3, 4]


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
    out = sew(host, [ov], np.random.default_rng(0), q=0.5)
    assert host.sum() == 0  # the host is not modified in place
    assert (out == 255).sum().item() == 3 * 16 * 32
    ys, xs = torch.nonzero(out[0] == 255, as_tuple=True)
    assert ys.max() - ys.min() + 1 == 16 and xs.max() - xs.min() + 1 == 32


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
    s = SewSettings(p=0.9, max_overlays=2, seed=3)
    ds = SewDataset(image_paths, 32, np.arange(10), s)
    a_img, a_src = ds[4]
    b_img, b_src = ds[4]
    assert torch.equal(a_img, b_img) and torch.equal(a_src, b_src) and a_img.shape == (3, 32, 32)
    assert a_src[0] == 4 and len(a_src) == 3
    ds.epoch = 1
    assert any(not torch.equal(ds[i][1], SewDataset(image_paths, 32, np.arange(10), s)[i][1]) for i in range(10))
    plain = SewDataset(image_paths, 32, np.arange(10), SewSettings(p=0.9, max_overlays=0))
    img, src = plain[4]
    assert src.tolist() == [4] and torch.equal(img, torch.full((3, 32, 32), 80, dtype=torch.uint8))


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
    fixed = train_adapter_em(tiny_model.visual, clip.normalizer_of(tiny_model), adapter, ds, z,
                             np.zeros_like(frozen), SewSettings(epochs=1, batch_size=4, estimator_lr=0.0))
    assert np.array_equal(fixed, z)


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
                               rule=RuleSettings(rule, ll_delta=0.5), weights=weights)
    assert np.array_equal(refined[frozen], z[frozen]) and not np.allclose(refined[~frozen], z[~frozen])
    assert np.isfinite(refined).all()


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="sew.p"):
        SewSettings(p=1.0)
    with pytest.raises(ValueError, match="sew.q"):
        SewSettings(q=0.0)
