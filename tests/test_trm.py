"""TRM-ML (pipeline.trm): regions, the bank, EMA thresholds, the contrastive loss, and its training in sew."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from pipeline.adapter import Adapter, AdapterConfig, region_features
from pipeline.em import train_adapter_em
from pipeline.features import GRID
from pipeline.online_transfer import AdapterPass, adapter_pass
from pipeline.sew import FeatureSewDataset, SewSettings
from pipeline.trm import Trm, TrmSettings, bernoulli_kl, ema_update, info_nce
from stages.common import Params, ParamsError


def _adapter(classes: int = 2, hidden: int = 4, embed: int = 4) -> Adapter:
    """An adapter with a region head over a random joint space of `embed` dims."""
    torch.manual_seed(0)
    adapter = Adapter(AdapterConfig(in_dim=8, n_classes=classes, grid=(2, 2), hidden=hidden, heads=2,
                                    prediction="region", embed=embed))
    adapter.set_joint_space(torch.randn(embed, 8), torch.randn(embed), None, torch.randn(classes, embed), 10.0)
    return adapter


def test_region_feature_is_the_energy_weighted_sum_of_the_cells():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # 1 image, 3 cells
    energies = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]])  # 2 classes
    f = region_features(tokens, energies)
    assert torch.allclose(f, torch.tensor([[[1.0, 0.0], [0.5, 0.5]]]))


def test_regions_are_the_decoders_cross_attention_of_each_class_query():
    adapter = _adapter(classes=3, hidden=8).eval()
    tokens = adapter.tokens(torch.randn(5, 8, 2, 2))
    features, attention = adapter.attend(tokens)
    assert torch.equal(features, adapter.decode(tokens))
    layer = adapter.decoder.layers[-1]  # the queries the cross-attention sees: after the self-attention block
    queries = adapter.queries.unsqueeze(0).expand(5, -1, -1)
    seen = layer.norm1(queries + layer.self_attn(queries, queries, queries, need_weights=False)[0])
    _, expected = layer.multihead_attn(seen, tokens + adapter.pos, tokens + adapter.pos, need_weights=True)
    assert torch.allclose(attention, expected, atol=1e-6)
    assert torch.allclose(attention.sum(-1), torch.ones(5, 3))


def test_info_nce_by_hand():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    key_class = torch.tensor([0, 1, 1])
    loss = info_nce(anchors, torch.tensor([0, 1]), keys, key_class, temperature=1.0)
    # anchor 0: one positive (1.0), negatives 0.0 and 0.6; anchor 1: positives 1.0 and 0.8, negative 0.0
    a0 = -math.log(math.e / (math.e + math.exp(0.0) + math.exp(0.6)))
    a1 = 0.5 * (-math.log(math.e / (math.e + 1)) - math.log(math.exp(0.8) / (math.exp(0.8) + 1)))
    assert loss.item() == pytest.approx((a0 + a1) / 2, rel=1e-5)
    assert info_nce(anchors, torch.tensor([0, 1]), keys[:1], key_class[:1], 1.0).item() == 0.0  # no negatives


def test_ema_thresholds_start_at_the_first_mean_then_move_by_eta():
    theta = torch.full((2,), float("nan"))
    s = torch.tensor([[0.8, 0.1], [0.6, 0.3]])
    pos = torch.tensor([[True, False], [True, False]])
    theta = ema_update(theta, s, pos, 0.9)
    assert theta[0].item() == pytest.approx(0.7) and math.isnan(theta[1].item())  # class 1: no positive yet
    theta = ema_update(theta, torch.tensor([[0.2, 0.5]]), torch.tensor([[True, True]]), 0.9)
    assert theta[0].item() == pytest.approx(0.9 * 0.7 + 0.1 * 0.2) and theta[1].item() == pytest.approx(0.5)


def test_bernoulli_kl_is_zero_only_at_agreement():
    t = torch.tensor([[2.0, -1.0]])
    assert bernoulli_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)
    assert bernoulli_kl(t, -t).item() > 0.1


def test_bank_keeps_the_top_energy_cells_of_known_positives_first_in_first_out():
    trm = Trm(TrmSettings(bank=3, top_k=2), _adapter())
    tokens = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)  # 3 cells of 4 dims
    energies = torch.tensor([[[0.1, 0.9, 0.5], [0.9, 0.1, 0.2]]])
    trm.push(tokens, energies, torch.tensor([[1, 0]], dtype=torch.int8))  # only class 0 known present
    assert trm.filled.tolist() == [2, 0]
    assert torch.equal(trm.bank[0, :2], tokens[0, [1, 2]])
    trm.push(tokens * 10, energies, torch.tensor([[1, -1]], dtype=torch.int8))
    assert trm.filled.tolist() == [3, 0]  # full: the oldest cell is overwritten
    assert torch.equal(trm.bank[0, 2], tokens[0, 1] * 10) and torch.equal(trm.bank[0, 0], tokens[0, 2] * 10)


def test_both_modalities_must_agree_and_known_entries_never_move():
    trm = Trm(TrmSettings(), _adapter())
    trm.filled.fill_(1)
    trm.theta[:, 0] = 0.5  # θ⁺ of both modalities
    trm.theta[:, 1] = 0.0  # θ⁻
    visual = torch.tensor([[0.9, 0.9, -0.5, 0.9]]).reshape(2, 2)
    text = torch.tensor([[0.9, 0.1, -0.5, 0.9]]).reshape(2, 2)
    sign = torch.tensor([[0, 0], [0, 1]], dtype=torch.int8)
    up, down = trm.decide((visual, text), sign)
    assert up.tolist() == [[True, False], [False, False]]  # (0, 1): text disagrees; (1, 1) is known
    assert down.tolist() == [[False, False], [True, False]]


def test_trm_trains_with_the_adapter_deterministically():
    rng = np.random.default_rng(0)
    truth = rng.random((12, 3)) < 0.4
    grid = rng.normal(size=(12, 8, 2, 2)).astype(np.float32)
    grid[:, :3] += 3 * truth[:, :, None, None]
    s = SewSettings(epochs=3, batch_size=4, max_overlays=0, e_weight=0.0)
    frozen = np.zeros_like(truth)
    frozen[::2] = True
    z = np.where(frozen, np.where(truth, 9.2, -9.2), np.where(truth, 0.2, -0.2)).astype(np.float32)
    settings = TrmSettings(start_epoch=1, bank=8, top_k=1)

    def run():
        torch.manual_seed(0)
        adapter = _adapter(classes=3, hidden=8, embed=5)
        trm = Trm(settings, adapter)
        refined = train_adapter_em(None, None, adapter, FeatureSewDataset({GRID: grid}, np.arange(12), s), z,
                                   frozen, s, transfer=trm)
        return refined, trm, adapter

    refined, trm, adapter = run()
    again, trm2, _ = run()
    assert np.array_equal(refined, again) and torch.equal(trm.bank, trm2.bank)
    assert (trm.filled.numpy() == np.minimum(8, 3 * (frozen & truth).sum(0))).all()  # one cell per positive, 3 epochs
    assert not torch.isnan(trm.theta[:, 0]).any()  # every class met a known positive
    assert np.array_equal(refined[frozen], z[frozen])
    out = adapter_pass(adapter, torch.from_numpy(grid))
    assert isinstance(out, AdapterPass) and torch.allclose(out.logits, adapter.head(out.class_features))
    # TRM-ML infers with the text-region matching score (§3.6): the adapter's prediction is its region head
    region_logits = adapter.region_head(region_features(out.joint, out.attention))
    assert torch.allclose(adapter(torch.from_numpy(grid)), region_logits)
    assert not torch.allclose(region_logits, out.logits)
    sign = torch.from_numpy(np.where(frozen, np.where(truth, 1, -1), 0).astype(np.int8))
    assert bool(trm.labelling) and len(trm.final(out, sign)) == 2
    trm.labelling.fill_(False)  # a run that never reached start_epoch labels nothing, its thresholds notwithstanding
    assert not any(bool(m.any()) for m in trm.final(out, sign))


def test_region_head_matches_joint_space_regions_with_the_text_representations():
    adapter = _adapter(classes=2, embed=4).eval()
    assert torch.allclose(adapter.region_log_scale.exp(), torch.tensor(10.0))  # CLIP's logit scale to start
    with torch.no_grad():
        adapter.text.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]]))
        adapter.region_log_scale.fill_(math.log(5.0))
        adapter.region_shift.copy_(torch.tensor([0.1, -0.2]))
    region = torch.tensor([[[3.0, 0.0, 0.0, 4.0], [0.0, -1.0, 0.0, 0.0]]])
    assert torch.allclose(adapter.region_head(region), torch.tensor([[(0.6 - 0.1) * 5, (-1.0 + 0.2) * 5]]))
    grid = torch.randn(3, 8, 2, 2)  # the cells pass the tower's projection, not the adapter's trained layers
    cells = grid.flatten(2).transpose(1, 2)
    assert torch.allclose(adapter.joint_cells(grid), cells @ adapter.cell_weight.T + adapter.cell_bias)
    with pytest.raises(ValueError, match="region head"):  # TRM-ML needs an adapter that has one
        Trm(TrmSettings(), Adapter(AdapterConfig(in_dim=8, n_classes=2, grid=(2, 2), hidden=4, heads=2)))


def test_fit_adapter_predicts_with_the_region_head_where_trm_trains_in_its_paper_setting():
    from pipeline.adaptation import adapter_prediction, needs_region_head
    from pipeline.hst import HstSettings

    known, none = np.array([[True, False]]), np.zeros((1, 2), bool)
    assert adapter_prediction(TrmSettings(), known, paper_setting=True) == "region"  # its §3.6
    assert adapter_prediction(TrmSettings(), known) == "query"  # `auto` with unknown: pseudo
    assert adapter_prediction(TrmSettings(prediction="region"), known) == "region"
    assert adapter_prediction(TrmSettings(prediction="query"), known, paper_setting=True) == "query"
    assert adapter_prediction(TrmSettings(), none, paper_setting=True) == "query"  # nothing known: TRM-ML is off
    assert adapter_prediction(HstSettings(modules="ist"), known, paper_setting=True) == "query"
    assert adapter_prediction(None, known) == "query"
    assert needs_region_head(TrmSettings(prediction="query"), known)  # it trains the region head either way
    assert not needs_region_head(TrmSettings(), none) and not needs_region_head(HstSettings(), known)


def test_one_online_transfer_at_a_time(tmp_path):
    from benchmarks.project import ROOT
    from stages import sew

    config = yaml.safe_load((ROOT / "tests" / "tiny_params.yaml").read_text())
    config["method"] = ["trm", "hst"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ParamsError, match="'method' names trm and hst, both online methods"):
        sew.check(Params.load(tmp_path / "params.yaml"))


@pytest.mark.parametrize("composites, prediction", [("pixels", "region"), ("features", "auto")])
def test_fit_adapter_starts_the_region_head_from_clip_and_exports_it(tmp_path, tiny_model, tiny_tokenizer,
                                                                     composites, prediction):
    """`sew` with TRM-ML: the adapter's region head starts from the tower's cell projection and CLIP's text
    embeddings of the classes with the scored templates, and the saved adapter predicts with the head
    `trm.prediction` names (`auto` with `unknown: pseudo`: the per-query head). With feature composites no
    tower is passed in: the one the descriptor names is loaded."""
    from PIL import Image

    from pipeline import clip
    from pipeline.adaptation import AdapterRecipe, TrainSplit, fit_adapter
    from pipeline.adapter import AdapterOptions
    from pipeline.features import encode_images
    from pipeline.models import load_checkpoint, save_checkpoint
    from tests.conftest import TINY_MODEL

    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(paths[-1])
    classes, templates = ["cat", "dog", "cow"], ["a {}.", "the {} here."]
    z = rng.normal(size=(8, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    frozen[::2] = True
    split = TrainSplit(np.arange(8), [str(i) for i in range(8)], [str(p) for p in paths], classes, z, None, templates)
    weights = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny_model.state_dict()}, weights)
    descriptor = {"model": TINY_MODEL, "weights": str(weights), "sha256": "x"}
    s = SewSettings(epochs=1, batch_size=4, max_overlays=1, composites=composites, image_size=32)
    model, features = tiny_model, None
    if composites == "features":
        features = encode_images(tiny_model.visual, clip.normalizer_of(tiny_model), paths, 32, s.overlay_side,
                                 s.max_overlays)
        model = None
    recipe = AdapterRecipe(s, AdapterOptions(hidden=16, heads=2),
                           transfer=TrmSettings(start_epoch=0, bank=4, prediction=prediction))
    spec, adapter, refined, _, _ = fit_adapter(model, descriptor, split, z, frozen, recipe, tmp_path / "work", "sew",
                                               features=features)
    head = "region" if prediction == "region" else "query"
    assert spec.adapter.prediction == head and spec.adapter.embed == adapter.cell_weight.shape[0]
    weight, bias, _ = clip.cell_projection(tiny_model.visual)
    assert torch.equal(adapter.cell_weight, weight) and torch.equal(adapter.cell_bias, bias)  # frozen
    start = clip.encode_classes(tiny_model, tiny_tokenizer, classes, templates)
    assert (F.cosine_similarity(adapter.text.detach(), start, dim=-1) > 0.9).all()  # learnt from CLIP's text
    assert np.array_equal(refined[frozen], z[frozen])
    save_checkpoint(tmp_path / "adapter.pt", spec, adapter)
    _, loaded = load_checkpoint(tmp_path / "adapter.pt", backbone=tiny_model)
    images = torch.stack([torch.from_numpy(np.array(Image.open(p).resize((32, 32)))).permute(2, 0, 1)
                          for p in paths[:3]])
    grid = clip.grid_features(tiny_model.visual, clip.normalize_u8(images, *clip.normalizer_of(tiny_model)))
    with torch.no_grad():
        out = adapter_pass(adapter.eval(), grid)
        region, query = adapter.region_head(region_features(out.joint, out.attention)), out.logits
        assert torch.allclose(loaded(images), region if head == "region" else query, atol=1e-5)
        assert not torch.allclose(region, query, atol=1e-3)
