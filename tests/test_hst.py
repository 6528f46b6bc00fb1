"""HST (pipeline.hst): its scores, losses and thresholds by hand, and its training inside sew's EM."""

import numpy as np
import pytest
import torch

from pipeline.adapter import Adapter, AdapterConfig
from pipeline.em import train_adapter_em
from pipeline.features import GRID
from pipeline.hst import (
    Hst,
    HstSettings,
    asymmetric_loss,
    clamped_threshold_loss,
    closed_clamp,
    cross_scores,
    has_intra_evidence,
    intra_scores,
    ranking_loss,
    threshold_loss,
)
from pipeline.online_transfer import composite_known_sign, known_sign_of
from pipeline.sew import FeatureSewDataset, SewSettings


def test_intra_score_is_the_mean_over_the_other_known_positives():
    p = torch.zeros(1, 4, 4)
    for (i, j), v in {(0, 1): 0.9, (0, 2): 0.3, (1, 2): 0.5, (3, 1): 0.2, (3, 2): 0.6}.items():
        p[0, i, j] = p[0, j, i] = v
    sign = torch.tensor([[0, 1, 1, -1]], dtype=torch.int8)  # 1 and 2 known present, 3 known absent
    s = intra_scores(p, sign)
    # unknown 0: mean of p01, p02; known 1: only p12 (its own diagonal left out); known absent 3: p31, p32
    assert torch.allclose(s, torch.tensor([[0.6, 0.5, 0.5, 0.4]]))
    assert has_intra_evidence(sign).tolist() == [[True, True, True, True]]
    alone = torch.tensor([[0, 1, 0, 0]], dtype=torch.int8)
    assert has_intra_evidence(alone).tolist() == [[True, False, True, True]]  # 1 has no other known positive


def test_intra_score_with_its_own_pair_as_the_authors_code():
    p = torch.zeros(1, 4, 4)
    for (i, j), v in {(0, 1): 0.9, (0, 2): 0.3, (1, 2): 0.5, (3, 1): 0.2, (3, 2): 0.6}.items():
        p[0, i, j] = p[0, j, i] = v
    sign = torch.tensor([[0, 1, 1, -1]], dtype=torch.int8)
    # a known positive counts its own pair as 1 and divides by both known positives: (1 + p12) / 2
    assert torch.allclose(intra_scores(p, sign, own_pair=True), torch.tensor([[0.6, 0.75, 0.75, 0.4]]))
    alone = torch.tensor([[0, 1, 0, -1]], dtype=torch.int8)
    assert intra_scores(p, alone, own_pair=True)[0, 1].item() == 1.0  # an image's only known positive: exactly 1


def test_authors_dtl_moves_theta_from_an_only_known_positive():
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, -0.5], requires_grad=True)
    y = closed_clamp(x)
    y.sum().backward()
    assert y.tolist() == [0.0, 0.5, 1.0, 1.0, 0.0]
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]  # the bounds pass gradient, as torch ≤ 2.13's clamp
    sign = torch.tensor([[1, -1, -1]], dtype=torch.int8)
    theta = torch.nn.Parameter(torch.tensor(1.0))
    s = torch.tensor([[1.0, 0.4, 0.2]], requires_grad=True)  # the only known positive scores exactly θ(0) = 1
    clamped_threshold_loss(s, theta, sign).backward()
    # BCE(0, 1) / 3 entries: dθ = (1 − σ(0)) / 3 > 0, so descent lowers θ; the positive's score is pushed up
    assert theta.grad.item() == pytest.approx(0.5 / 3)
    assert s.grad[0, 0].item() == pytest.approx(-0.5 / 3) and s.grad[0, 1:].tolist() == [0.0, 0.0]
    below = torch.nn.Parameter(torch.tensor(1.0))
    clamped_threshold_loss(torch.tensor([[0.9, 0.4, 0.2]]), below, sign).backward()
    assert below.grad.item() == 0.0  # every score below θ: nothing moves


def test_asymmetric_loss_ignores_easy_negatives_and_focuses_positives():
    logits = torch.logit(torch.tensor([0.04, 0.5, 0.5]))
    positive = torch.tensor([False, False, True])
    per = [asymmetric_loss(logits[k:k + 1], positive[k:k + 1]).item() for k in range(3)]
    assert per[0] == 0.0  # p below the margin m = 0.05: no loss at all
    assert per[1] == pytest.approx(-(0.45 ** 2) * np.log(0.55), rel=1e-5)
    assert per[2] == pytest.approx(-0.5 * np.log(0.5), rel=1e-5)


def test_ranking_loss_pulls_shared_known_positives_and_pushes_the_rest():
    f = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])  # 3 images, 1 class, 2-d features
    sign = torch.tensor([[1], [1], [-1]], dtype=torch.int8)
    # pairs: (0,1) both positive, s = 1 → 0; (0,2) and (1,2) positive-negative, s = 0 → 1 each
    assert ranking_loss(f, sign).item() == pytest.approx(2 / 3)
    unknown = torch.tensor([[1], [0], [0]], dtype=torch.int8)
    assert ranking_loss(f, unknown).item() == 0.0  # no pair with the class known in both


def test_cross_score_is_the_mean_cosine_to_the_class_prototypes():
    protos = torch.zeros(2, 3, 2)
    protos[0, 0] = torch.tensor([1.0, 0.0])
    protos[0, 1] = torch.tensor([0.0, 1.0])
    counts = torch.tensor([2, 0])
    f = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])
    s = cross_scores(f, protos, counts)
    assert s[0, 0].item() == pytest.approx(0.5) and s[0, 1].item() == 0.0


def _learn_threshold(pos: float, neg: float, n_pos: int, n_neg: int, temperature: float) -> float:
    scores = torch.tensor([[pos] * n_pos + [neg] * n_neg])
    sign = torch.tensor([[1] * n_pos + [-1] * n_neg], dtype=torch.int8)
    theta = torch.nn.Parameter(torch.tensor(1.0))
    opt = torch.optim.Adam([theta], lr=0.01)
    for _ in range(1500):
        loss = threshold_loss(scores, theta, sign, torch.ones_like(sign, dtype=torch.bool), temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return theta.item()


def test_dtl_threshold_separates_known_positives_from_negatives():
    assert 0.2 < _learn_threshold(0.8, 0.2, 1, 7, 0.05) < 0.8
    # at the paper's τ = 1 the class balance wins: θ rises above every score and nothing would be raised
    assert _learn_threshold(0.8, 0.2, 1, 7, 1.0) > 1.0


def test_raise_only_unknown_entries_and_composite_known_labels():
    hst = Hst(HstSettings(modules="ist", start_epoch=0), n_classes=3, dim=4)
    scores = {"intra": (torch.tensor([[0.9, 0.9, 0.1]]), torch.ones(1, 3, dtype=torch.bool))}
    with torch.no_grad():
        hst.head.theta_intra.fill_(0.5)
    sign = torch.tensor([[1, 0, 0]], dtype=torch.int8)
    assert hst.raise_mask(scores, sign).tolist() == [[False, True, False]]
    host = known_sign_of(torch.tensor([[5.0, -5.0, -5.0]]), torch.tensor([[True, True, False]]))
    assert host.tolist() == [[1, -1, 0]]
    overlaid = torch.tensor([[False, True, False]])  # an overlay shows class 1: its known absence no longer holds
    hidden = torch.tensor([[True, False, False]])  # class 0 may be covered
    assert composite_known_sign(host, overlaid, hidden).tolist() == [[0, 0, 0]]
    assert composite_known_sign(host, overlaid, None).tolist() == [[1, 0, 0]]


def _features(n: int = 12, classes: int = 3, seed: int = 0) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.random((n, classes)) < 0.4
    grid = rng.normal(size=(n, 8, 2, 2)).astype(np.float32)
    grid[:, :classes] += 3 * truth[:, :, None, None]  # each class shows in one channel
    return {GRID: grid}, truth


@pytest.mark.parametrize(("modules", "dtl"), [("ist", "sigmoid"), ("cst", "sigmoid"), ("both", "sigmoid"),
                                             ("both", "clamp")])
def test_hst_trains_with_the_adapter_deterministically(modules, dtl):
    arrays, truth = _features()
    s = SewSettings(epochs=4, batch_size=4, max_overlays=0, e_weight=0.0)
    z = np.where(truth, 1.0, -1.0).astype(np.float32) * 0.2
    frozen = np.zeros_like(truth)
    frozen[::2] = True
    z = np.where(frozen, np.where(truth, 9.2, -9.2), z).astype(np.float32)
    settings = HstSettings(modules=modules, start_epoch=1, prototype_every=2, prototypes=2, hidden=8, dtl=dtl)

    def run():
        torch.manual_seed(0)
        adapter = Adapter(AdapterConfig(in_dim=8, n_classes=3, grid=(2, 2), hidden=8, heads=2))
        hst = Hst(settings, 3, 8)
        refined = train_adapter_em(None, None, adapter, FeatureSewDataset(arrays, np.arange(12), s), z, frozen, s,
                                   transfer=hst)
        return refined, hst

    refined, hst = run()
    again, hst2 = run()
    assert np.array_equal(refined, again)
    if settings.ist:
        assert hst.head.theta_intra.item() != 1.0  # DTL moved it once pseudo labelling began
    if dtl == "clamp":  # the authors' form: θ_cross stays at 1 (no mean cosine reaches it), nothing from CST
        assert hst.head.theta_cross.item() == 1.0
    if settings.cst:
        assert hst.head.has_prototypes and torch.equal(hst.head.prototypes, hst2.head.prototypes)
        counts = hst.head.prototype_counts.numpy()
        assert (counts == np.minimum(2, (frozen & truth).sum(0))).all()  # from known positives only
    assert np.array_equal(refined[frozen], z[frozen])
