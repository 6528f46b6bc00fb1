import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline import rules as R
from pipeline.g2netpl import G2netpl, g2netpl_update
from pipeline.label_distribution import LabelDistribution, label_distribution_weights, weighted_contrastive_loss
from pipeline.large_loss import LargeLoss, large_loss_keep, rejection_rate
from pipeline.plmcl import Plmcl, plmcl_update
from pipeline.rules import NO_RULE, Rule


def test_plmcl_update_by_hand():
    y, y_prev, p = np.array([0.5]), np.array([0.4]), np.array([0.9])
    # ŷ + η(p − ŷ) + (α − β)(ŷ − ŷ_prev) = 0.5 + 0.5·0.4 + 0.4·0.1
    assert plmcl_update(y, y_prev, p, eta=0.5, alpha=0.9, beta=0.5)[0] == pytest.approx(0.74)
    # from rest, momentum alone does not move it; damping beta = alpha cancels momentum
    assert plmcl_update(y, y, p, 0.0, 0.9, 0.5)[0] == pytest.approx(0.5)
    assert plmcl_update(y, y_prev, p, 0.0, 0.5, 0.5)[0] == pytest.approx(0.5)
    assert plmcl_update(np.array([0.99]), np.array([0.5]), np.array([1.0]), 0.5, 0.9, 0.0)[0] == 1 - R.EPS


def test_g2netpl_step_by_hand_and_fixed_point():
    y, p = np.array([0.6]), np.array([0.7])
    zy, zp = np.log(0.6 / 0.4), np.log(0.7 / 0.3)
    grad = -zy + 2.0 * (zy - zp)
    # one step moves the logit of ŷ by −lr·dΦ/dŷ
    assert g2netpl_update(y, p, eta=2.0, lr=0.1, steps=1)[0] == pytest.approx(1 / (1 + np.exp(-(zy - 0.1 * grad))))
    # many steps reach the sharpened fixed point S⁻¹(ŷ) = η/(η − 1)·S⁻¹(p)
    out = g2netpl_update(np.array([0.5, 0.5]), np.array([0.7, 0.2]), eta=3.0, lr=0.02, steps=3000)
    target = 1 / (1 + np.exp(-1.5 * np.log(np.array([0.7, 0.2]) / np.array([0.3, 0.8]))))
    assert np.allclose(out, target, atol=1e-3)
    assert out[0] > 0.7 and out[1] < 0.2  # pushed towards 0/1


def test_large_loss_schedule_and_rejection():
    # delta in percent, as the reference code's delta_rel: 10 % more per epoch, capped at 25 %
    assert [rejection_rate(e, 10.0, 0.25) for e in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.25])
    assert rejection_rate(7, 0.1, 0.5) == pytest.approx(0.007)  # the default: 0.7 % by epoch 7, not 70 %
    loss = torch.tensor([[5.0, 1.0, 9.0, 2.0], [8.0, 0.5, 3.0, 7.0]])
    unknown = torch.tensor([[True, True, False, True], [True, True, True, False]])
    keep = large_loss_keep(loss, unknown, rate=2 / 8)  # ⌈2/8 · 8 entries⌉ = 2: the 2 largest unknown, 8 and 5
    assert keep.tolist() == [[False, True, True, True], [False, True, True, True]]
    assert large_loss_keep(loss, unknown, rate=0.0).all()


def test_rule_loss_large_loss_ignores_rejected_entries():
    logits = torch.tensor([[3.0, -3.0, 0.0]])
    targets = torch.tensor([[0.0, 1.0, 1.0]])  # entries 0 and 1 are confidently wrong: large losses
    known = torch.tensor([[False, False, True]])
    rule = LargeLoss(delta=30.0, max_rate=1.0)  # 30 % more per epoch
    per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")[0]
    assert R.rule_loss(logits, targets, known, rule, epoch=0).item() == pytest.approx(per.mean().item())
    # epoch 1: rate 0.3 → ⌈0.3 · 3⌉ = 1 entry: the larger of entries 0, 1 (equal losses → one of them) rejected
    assert R.rule_loss(logits, targets, known, rule, epoch=1).item() == pytest.approx((per[0] + per[2]).item() / 2)


def test_rule_loss_large_loss_corrects_picked_entries():
    """LL-Ct: the picked entry trains on its flipped label (the reference's corrected_loss_matrix), not dropped."""
    logits = torch.tensor([[3.0, -1.0, 0.5]])
    targets = torch.tensor([[0.0, 0.0, 1.0]])  # under AN: entry 0 (logit 3, target 0) has the largest loss
    known = torch.tensor([[False, False, True]])
    rule = LargeLoss(delta=30.0, max_rate=1.0, scheme="LL-Ct")
    per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")[0]
    flipped = F.binary_cross_entropy_with_logits(logits[0, 0], torch.tensor(1.0))
    assert R.rule_loss(logits, targets, known, rule, epoch=0).item() == pytest.approx(per.mean().item())
    got = R.rule_loss(logits, targets, known, rule, epoch=1)  # ⌈0.3 · 3⌉ = 1 entry: entry 0
    assert got.item() == pytest.approx((flipped + per[1] + per[2]).item() / 3)
    rejected = R.rule_loss(logits, targets, known, LargeLoss(delta=30.0, max_rate=1.0), epoch=1)
    assert rejected.item() == pytest.approx((per[1] + per[2]).item() / 2)
    # flipped, the picked entry's loss pushes its logit up
    x = logits.clone().requires_grad_(True)
    R.rule_loss(x, targets, known, rule, epoch=1).backward()
    assert x.grad[0, 0] < 0


def test_no_rule_is_plain_bce():
    logits, targets = torch.randn(4, 3), torch.rand(4, 3)
    got = R.rule_loss(logits, targets, torch.zeros(4, 3, dtype=torch.bool), NO_RULE, 3)
    assert torch.equal(got, F.binary_cross_entropy_with_logits(logits, targets))


def test_label_distribution_weights():
    emb = np.array([[1.0, 0.0], [0.0, 1.0]])
    text = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    positive = np.array([[True, True, False], [False, False, False]])
    w = label_distribution_weights(emb, text, positive, sigma=0.1)
    a = np.exp(-np.array([0.0, 0.4]) / 0.1)  # distances 0 and 0.4 → RBF affinities
    assert w[0, :2] == pytest.approx(2 * a / a.sum()) and w[0, 2] == 1.0
    assert w[0, :2].mean() == pytest.approx(1.0) and (w[1] == 1).all()


def test_weighted_contrastive_loss_by_hand():
    angles = torch.tensor([0.0, 0.5, 2.0, 3.0])
    emb = torch.stack([angles.cos(), angles.sin()], 1) * torch.tensor([[2.0], [1.0], [3.0], [1.0]])  # norms ignored
    positive = torch.tensor([[True, True], [True, False], [False, True], [False, False]])
    dist = torch.tensor([[3.0, 1.0], [1.0, 7.0], [5.0, 2.0], [1.0, 1.0]])  # read at the positives only
    cos = torch.cos(angles[:, None] - angles[None, :]) / 0.1
    log_p = [torch.log_softmax(torch.cat([cos[i, :i], cos[i, i + 1:]]), 0) for i in range(4)]
    # anchor 0 spreads 3/4 on class 0 (image 1 holds it) and 1/4 on class 1 (image 2); images 1 and 2 each
    # share their one label with image 0 only; image 3 holds nothing and is no anchor
    expected = (-(0.75 * log_p[0][0] + 0.25 * log_p[0][1]) - log_p[1][0] - log_p[2][0]) / 3
    got = weighted_contrastive_loss(emb, positive, dist, 0.1)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    uniform = weighted_contrastive_loss(emb, positive, torch.ones(4, 2), 0.1)
    assert uniform.item() != pytest.approx(got.item(), rel=1e-3)  # the distribution weighs the pairs
    assert weighted_contrastive_loss(emb, torch.zeros(4, 2, dtype=torch.bool), dist, 0.1).item() == 0.0


def test_label_distribution_adds_its_contrastive_loss_to_a_plain_bce():
    torch.manual_seed(0)
    logits, emb, targets = torch.randn(6, 3), torch.randn(6, 5), torch.rand(6, 3)
    weights = torch.rand(6, 3) + 0.5
    known = torch.zeros(6, 3, dtype=torch.bool)
    rule = LabelDistribution(weight=0.5, temperature=0.2)
    got = R.training_loss(logits, emb, targets, known, rule, 0, weights)
    bce = F.binary_cross_entropy_with_logits(logits, targets)  # the weights never reach the BCE
    con = weighted_contrastive_loss(emb, targets > 0.5, weights, 0.2)
    assert got.item() == pytest.approx((bce + 0.5 * con).item(), rel=1e-6) and con.item() > 0
    assert torch.equal(R.training_loss(logits, emb, targets, known, LabelDistribution(weight=0.0), 0, weights), bce)
    # where `ignore` leaves an entry without a target it is no positive of the contrastive loss either
    labelled = torch.ones(6, 3, dtype=torch.bool)
    labelled[:, 0] = False
    only = R.training_loss(logits, emb, targets, known, rule, 0, weights, labelled)
    masked = targets > 0.5
    masked[:, 0] = False
    con_l = weighted_contrastive_loss(emb, masked, weights, 0.2)
    bce_l = R.rule_loss(logits, targets, known, rule, 0, None, labelled)
    assert only.item() == pytest.approx((bce_l + 0.5 * con_l).item(), rel=1e-6)


def test_known_labels_never_overwritten_by_updates():
    y = np.array([[0.9, 0.2], [0.4, 0.6]])
    known = np.array([[True, False], [False, True]])
    p = np.array([[0.1, 0.9], [0.9, 0.1]])
    for rule in (Plmcl(), G2netpl()):
        new = R.update_pseudo_labels(y, y, p, known, rule)
        assert new[0, 0] == 0.9 and new[1, 1] == 0.6 and new[0, 1] != 0.2 and new[1, 0] != 0.4
    assert R.update_pseudo_labels(y, y, p, known, NO_RULE) is y  # no label step without such a rule


def test_unknown_targets_of_the_papers_settings():
    targets = torch.tensor([[0.9, 0.2, 0.7]])
    labelled = torch.ones(1, 3, dtype=torch.bool)
    known = torch.tensor([[True, False, False]])
    pseudo = torch.tensor([[False, True, False]])  # entry 1 trains on its pseudo label, entry 2 is free
    t, lab = R.unknown_targets(targets, labelled, known, pseudo, "negative")
    assert t[0].tolist() == pytest.approx([0.9, 0.2, 0.0]) and lab.all()
    t, lab = R.unknown_targets(targets, labelled, known, pseudo, "ignore")
    assert t[0].tolist() == pytest.approx([0.9, 0.2, 0.5]) and lab.tolist() == [[True, True, False]]


def test_partial_bce_normalises_each_image_by_its_known_entries():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0], [1.0, 1.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    labelled = torch.tensor([[True, True, False], [False, False, True], [False, False, False]])
    per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    got = R.rule_loss(logits, targets, labelled, Rule(unknown="ignore"), 0, labelled=labelled)
    # image 0: mean of its two known entries, image 1: its one, image 2 (nothing known) left out
    assert got.item() == pytest.approx(((per[0, 0] + per[0, 1]) / 2 + per[1, 2]).item() / 2)
    batch = R.rule_loss(logits, targets, labelled, Rule(unknown="negative"), 0, labelled=labelled)
    assert batch.item() == pytest.approx((per[0, 0] + per[0, 1] + per[1, 2]).item() / 3)
    nothing = torch.zeros_like(labelled)
    assert R.rule_loss(logits, targets, nothing, Rule(unknown="ignore"), 0, labelled=nothing).item() == 0.0


def test_curriculum_takes_confident_pseudo_labels_first_and_every_one_last():
    y = np.array([[0.95, 0.5], [0.6, 0.1], [0.3, 0.45], [0.99, 0.0]])
    known = np.array([[False, False], [False, False], [False, False], [True, True]])
    # class 0's unknown margins 0.9, 0.2, 0.4 (mean 0.5); class 1's 0, 0.8, 0.1 (mean 0.3)
    first = R.curriculum_mask(y, known, 0.0)
    assert first.tolist() == [[True, False], [False, True], [False, False], [False, False]]
    half = R.curriculum_mask(y, known, 0.5)  # τ = 0.25 and 0.15
    assert half.tolist() == [[True, False], [False, True], [True, False], [False, False]]
    assert R.curriculum_mask(y, known, 1.0).tolist() == (~known).tolist()


def test_g2netpl_l1_term_by_hand():
    y, p = np.array([0.6, 0.4]), np.array([0.7, 0.3])
    zy, zp = np.log(y / (1 - y)), np.log(p / (1 - p))
    grad = -zy + 2.0 * (zy - zp) + 0.5 * np.sign(y - p)
    assert g2netpl_update(y, p, eta=2.0, lr=0.1, steps=1, l1=0.5) == pytest.approx(1 / (1 + np.exp(-(zy - 0.1 * grad))))


def test_g2netpl_player_descends_steadily_on_confident_entries():
    """Near 0 and 1 Φ's curvature (η − 1)/(ŷ(1 − ŷ)) is large: a step on ŷ itself at lr 0.05 overshot there (p = 0.05
    went 0.0001, 0.19, 0.0001, …). Every step must lower Φ and move ŷ the same way, towards the sharpened point."""
    p = np.array([0.01, 0.05, 0.1, 0.3, 0.7, 0.9, 0.99])
    eta, l1 = 2.0, 0.5

    def phi(y: np.ndarray) -> np.ndarray:
        kl = y * np.log(y / p) + (1 - y) * np.log((1 - y) / (1 - p))
        return -(y * np.log(y) + (1 - y) * np.log(1 - y)) + eta * kl + l1 * np.abs(y - p)

    path = [p.copy()]
    for _ in range(30):
        path.append(g2netpl_update(path[-1], p, eta=eta, lr=0.05, steps=1, l1=l1))
    path = np.array(path)
    steps = np.diff(path, axis=0)
    sharper = np.where(p > 0.5, 1.0, -1.0)
    assert (steps * sharper >= 0).all()  # monotone, towards 0 below ½ and 1 above
    assert (np.diff(np.array([phi(y) for y in path]), axis=0) <= 1e-12).all()


def test_curriculum_and_lambda_apply_where_the_papers_do():
    assert not Plmcl().uses_curriculum  # with CLIP's labels as ŷ(0) every entry trains
    assert Plmcl(unknown="ignore").uses_curriculum and G2netpl(unknown="negative").uses_curriculum
    assert not Plmcl(unknown="ignore", curriculum=False).uses_curriculum
    assert not LargeLoss(unknown="ignore").uses_curriculum
    assert Plmcl(weight=0.3).pseudo_weight == 0.3 and G2netpl().pseudo_weight == 1
    assert G2netpl(weight=0.1).pseudo_weight == 0.1 and LargeLoss().pseudo_weight == 1
    with pytest.raises(ValueError, match="unknown must be one of"):
        Rule(unknown="maybe")
    with pytest.raises(ValueError, match=r"plmcl.eta must be in \[0.0, 1.0\]"):  # a rule's keys name its section
        Plmcl(eta=2.0)


def test_known_weights_weigh_the_bce_beside_the_rules_own_weights():
    """`sew.known_weight`: with no rule the BCE is the known-weighted mean; a REPRESENTATION rule (label
    distributions) keeps its weights for its contrastive loss and its BCE takes the known weights alone."""
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 3), torch.rand(4, 3)
    known = torch.zeros(4, 3, dtype=torch.bool)
    known[0] = True
    kw = torch.where(known, 3.0, 1.0)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    got = R.training_loss(logits, None, targets, known, NO_RULE, 0, known_weights=kw)
    assert torch.allclose(got, (bce * kw).sum() / kw.sum())
    assert not torch.allclose(got, bce.mean())  # the known row counts three times
    rule_w = torch.rand(4, 3)
    both = R.training_loss(logits, None, targets, known, NO_RULE, 0, rule_w, known_weights=kw)
    assert torch.allclose(both, (bce * rule_w * kw).sum() / (rule_w * kw).sum())
    assert torch.equal(R.training_loss(logits, None, targets, known, NO_RULE, 0), F.binary_cross_entropy_with_logits(
        logits, targets))  # without known weights: the rule-free loss, bit for bit
    ld = LabelDistribution()
    emb = torch.randn(4, 5)
    got = R.training_loss(logits, emb, targets, known, ld, 0, rule_w, known_weights=kw)
    expected = (bce * kw).sum() / kw.sum() + ld.representation_loss(emb, targets, None, rule_w)
    assert torch.allclose(got, expected)
