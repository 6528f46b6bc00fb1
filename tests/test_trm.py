"""TRM-ML (pipeline.trm): regions, the bank, EMA thresholds, the contrastive loss, and its training in sew."""

import math

import numpy as np
import pytest
import torch
import yaml

from pipeline.adapter import Adapter, AdapterConfig
from pipeline.features import GRID
from pipeline.online_transfer import AdapterPass, adapter_pass
from pipeline.sew import FeatureSewDataset, SewSettings, train_adapter_em
from pipeline.trm import Trm, TrmSettings, bernoulli_kl, ema_update, info_nce, region_features
from stages.common import Params, ParamsError


def _adapter(classes: int = 2, hidden: int = 4) -> Adapter:
    torch.manual_seed(0)
    return Adapter(AdapterConfig(in_dim=8, n_classes=classes, grid=(2, 2), hidden=hidden, heads=2))


def test_region_feature_is_the_energy_weighted_mean_of_the_cells():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # 1 image, 3 cells
    energies = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]])  # 2 classes
    f = region_features(tokens, energies)
    assert torch.allclose(f, torch.tensor([[[1.0, 0.0], [0.5, 0.5]]]))


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
    trm = Trm(TrmSettings(enabled=True, bank=3, top_k=2), _adapter())
    tokens = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)  # 3 cells of 4 dims
    energies = torch.tensor([[[0.1, 0.9, 0.5], [0.9, 0.1, 0.2]]])
    trm.push(tokens, energies, torch.tensor([[1, 0]], dtype=torch.int8))  # only class 0 known present
    assert trm.filled.tolist() == [2, 0]
    assert torch.equal(trm.bank[0, :2], tokens[0, [1, 2]])
    trm.push(tokens * 10, energies, torch.tensor([[1, -1]], dtype=torch.int8))
    assert trm.filled.tolist() == [3, 0]  # full: the oldest cell is overwritten
    assert torch.equal(trm.bank[0, 2], tokens[0, 1] * 10) and torch.equal(trm.bank[0, 0], tokens[0, 2] * 10)


def test_both_modalities_must_agree_and_known_entries_never_move():
    trm = Trm(TrmSettings(enabled=True), _adapter())
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
    settings = TrmSettings(enabled=True, start_epoch=1, bank=8, top_k=1)

    def run():
        torch.manual_seed(0)
        adapter = Adapter(AdapterConfig(in_dim=8, n_classes=3, grid=(2, 2), hidden=8, heads=2))
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
    assert isinstance(out, AdapterPass) and torch.allclose(out.logits, adapter(torch.from_numpy(grid)))
    sign = torch.from_numpy(np.where(frozen, np.where(truth, 1, -1), 0).astype(np.int8))
    assert bool(trm.labelling) and len(trm.final(out, sign)) == 2
    trm.labelling.fill_(False)  # a run that never reached start_epoch labels nothing, its thresholds notwithstanding
    assert not any(bool(m.any()) for m in trm.final(out, sign))


def test_one_online_transfer_at_a_time(tmp_path):
    from benchmarks.project import ROOT
    from stages import sew

    config = yaml.safe_load((ROOT / "tests" / "tiny_params.yaml").read_text())
    config["hst"]["modules"] = "ist"
    config["trm"]["enabled"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ParamsError, match="one known-label transfer"):
        sew.check(Params.load(tmp_path / "params.yaml"))
