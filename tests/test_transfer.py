import numpy as np
import pytest

from pipeline import transfer as T


def test_spherical_kmeans_finds_two_directions():
    rng = np.random.default_rng(0)
    a = np.array([1.0, 0, 0]) + 0.05 * rng.standard_normal((20, 3))
    b = np.array([0, 1.0, 0]) + 0.05 * rng.standard_normal((20, 3))
    c = T.spherical_kmeans(np.concatenate([a, b]), k=2, iters=20, seed=0)
    assert c.shape == (2, 3) and np.allclose(np.linalg.norm(c, axis=1), 1)
    assert sorted(np.argmax(np.abs(c), axis=1).tolist()) == [0, 1]
    assert T.spherical_kmeans(a[:3], k=10, iters=5, seed=0).shape == (3, 3)  # k capped at n
    assert np.array_equal(c, T.spherical_kmeans(np.concatenate([a, b]), k=2, iters=20, seed=0))


def test_ema_thresholds_by_hand():
    # one class, 4 rows, batches of 2 in the order the seed gives; check against a hand EMA
    s = np.array([[0.9], [0.1], [0.7], [0.3]])
    known = np.ones((4, 1), bool)
    labels = np.array([[1], [0], [1], [0]])
    order = np.random.default_rng(5).permutation(4)
    batches = [order[:2], order[2:]]
    pos_means = [s[b][labels[b] > 0].mean() for b in batches if (labels[b] > 0).any()]
    neg_means = [s[b][labels[b] == 0].mean() for b in batches if (labels[b] == 0).any()]

    def ema(values, eta):
        theta = values[0]
        for v in values[1:]:
            theta = eta * theta + (1 - eta) * v
        return theta

    pos, neg = T.ema_thresholds(s, known, labels, momentum=0.8, batch_size=2, seed=5)
    assert pos[0] == pytest.approx(ema(pos_means, 0.8)) and neg[0] == pytest.approx(ema(neg_means, 0.8))
    # unknown entries never count; a class with no known positive gets NaN
    pos2, _ = T.ema_thresholds(s, np.zeros((4, 1), bool), labels, 0.8, 2, 5)
    assert np.isnan(pos2[0])


def test_ema_explicit_sequence():
    # rows in a fixed order: batch 1 positives mean 0.8, batch 2 positives mean 0.6 → θ⁺ = 0.9·0.8 + 0.1·0.6
    s = np.array([[0.8], [0.6]])
    known, labels = np.ones((2, 1), bool), np.ones((2, 1), int)
    order = np.random.default_rng(0).permutation(2)
    first, second = s[order[0], 0], s[order[1], 0]
    pos, neg = T.ema_thresholds(s, known, labels, momentum=0.9, batch_size=1, seed=0)
    assert pos[0] == pytest.approx(0.9 * first + 0.1 * second) and np.isnan(neg[0])


def test_dtl_step_by_hand():
    s = np.array([[0.3], [0.1]])
    known, labels = np.ones((2, 1), bool), np.array([[1], [0]])
    theta, tau, lr = np.array([0.2]), 0.1, 0.01
    p1, p2 = 1 / (1 + np.exp(-(0.3 - 0.2) / tau)), 1 / (1 + np.exp(-(0.1 - 0.2) / tau))
    grad = ((p1 - 1) * (-1 / tau) + (p2 - 0) * (-1 / tau)) / 2
    assert T.dtl_step(theta, s, known, labels, tau, lr)[0] == pytest.approx(0.2 - lr * grad)


def test_dtl_threshold_separates_known_labels():
    rng = np.random.default_rng(0)
    s = np.concatenate([0.30 + 0.01 * rng.standard_normal(50), 0.20 + 0.01 * rng.standard_normal(50)])[:, None]
    labels = np.r_[np.ones(50), np.zeros(50)].astype(int)[:, None]
    theta = T.dtl_thresholds(s, np.ones_like(labels, bool), labels, temperature=0.01, lr=0.0005, steps=500)
    assert 0.22 < theta[0] < 0.28


def test_decide_never_touches_known_entries():
    s = np.array([[0.9, 0.1], [0.8, 0.2], [0.95, 0.05], [0.1, 0.9]])
    known = np.array([[1, 1], [1, 1], [0, 0], [0, 0]], bool)
    labels = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    up, down = T.decide(s, known, labels, T.ThresholdRule("ema", momentum=0.5, batch_size=4))
    assert not (up & known).any() and not (down & known).any()
    assert up[2, 0] and down[2, 1] and not up[3, 1]  # class 1 has no known positive: never raised
    assert not down[3, 0]  # class 0 has no known negative: never lowered


def test_cooccurrence_counts_known_pairs():
    labels = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 1, 0]])
    known = np.ones((4, 3), bool)
    known[3, 0] = False  # row 3 does not count towards P(0 | 1)
    p = T.cooccurrence(labels, known)
    assert p[1, 0] == pytest.approx(2 / 3)  # P(1 | 0): rows 0, 1 of rows 0, 1, 2
    assert p[0, 1] == pytest.approx(2 / 2)  # P(0 | 1) over rows 0, 1 (row 3 has 0 unknown)
    assert p[0, 0] == 0
    s = T.cooccurrence_scores(p, labels, known)
    assert s[2, 1] == pytest.approx(p[1, 0] + p[1, 2])


def test_cooccurrence_transfer_raises_partner_of_known_positive():
    # classes 0 and 1 always appear together; class 2 alone
    rng = np.random.default_rng(0)
    labels = np.zeros((200, 3), int)
    pair = rng.random(200) < 0.5
    labels[pair, 0] = labels[pair, 1] = 1
    labels[~pair, 2] = 1
    known = rng.random((200, 3)) < 0.5
    up, p = T.transfer_by_cooccurrence(known, labels, T.ThresholdRule("ema", batch_size=16))
    assert p[1, 0] == pytest.approx(1.0)
    assert up.any() and not (up & known).any()
    assert labels[up].mean() == 1.0  # only true partners are raised


def test_prototype_transfer_on_clustered_embeddings():
    rng = np.random.default_rng(0)
    n, d = 300, 16
    labels = (rng.random((n, 2)) < 0.4).astype(int)
    dirs = np.eye(d)[:2]
    emb = labels @ dirs + 0.3 * rng.standard_normal((n, d))
    text = dirs + 0.1 * rng.standard_normal((2, d))
    known = rng.random((n, 2)) < 0.3
    pseudo = np.zeros((n, 2))
    up, down, bank, sims = T.transfer_by_prototypes(emb, text, pseudo, known, labels,
                                                    T.ThresholdRule("ema", batch_size=32), k=3, bank=10)
    assert bank.visual.shape == (2, 3, d) and list(bank.counts) == [3, 3]
    assert not (up & known).any() and not (down & known).any()
    assert up.sum() > 20 and labels[up].mean() > 0.9 and (1 - labels[down]).mean() > 0.9


def test_apply_transfer():
    t = np.array([[-3.0, 5.0, 0.0]], np.float32)
    out = T.apply_transfer(t, np.array([[True, True, False]]), np.array([[False, False, True]]), 2.0)
    assert out.tolist() == [[2.0, 5.0, -2.0]]


def test_held_out_moves_decide_each_known_entry_with_it_hidden():
    """Every known entry is decided exactly once, by a call that cannot see it; unknown entries never."""
    rng = np.random.default_rng(0)
    known = rng.random((30, 4)) < 0.5
    calls = []

    def decide(visible):
        calls.append(visible.copy())
        hidden = known & ~visible
        # a decision that reads the visible mask: raise what is hidden in even classes, lower it in odd ones
        up = hidden.copy()
        up[:, 1::2] = False
        down = hidden & ~up
        return T.LabelTransfer(up, down, {})

    up, down = T.held_out_moves(decide, known, folds=3, seed=1)
    assert len(calls) == 3
    assert all(not (v & ~known).any() for v in calls)  # never shows an unknown entry as known
    hidden_count = sum((known & ~v).astype(int) for v in calls)
    assert np.array_equal(hidden_count, known.astype(int))  # each known entry hidden in exactly one fold
    assert np.array_equal(up | down, known) and not (up & down).any()
    assert up[:, 0].any() and not up[:, 1].any() and down[:, 1].any()
    assert np.array_equal(up, T.held_out_moves(decide, known, folds=3, seed=1)[0])  # seeded


def test_held_out_gate_keeps_the_classes_whose_moves_help():
    # class 0: raising the two hidden positives fixes the ranking; class 1: raising a negative breaks it;
    # class 2: no move on a known entry (no evidence); class 3: no known positive
    target = np.array([[-3.0, 1.0, 0.5, 0.0],
                       [-2.0, -1.0, -0.5, 0.0],
                       [0.0, -2.0, 0.0, 0.0],
                       [1.0, 0.0, 0.0, 0.0]])
    labels = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]])
    known = np.ones_like(labels, bool)
    up = np.zeros_like(known)
    up[[0, 1], 0] = True
    up[1, 1] = True
    keep = T.held_out_gate(target, up, np.zeros_like(up), known, labels, logit=2.0)
    assert keep.tolist() == [True, False, False, False]
    # lowering the negatives that outrank class 0's positives below them helps too
    down = np.zeros_like(known)
    down[[2, 3], 0] = True
    assert T.held_out_gate(target, np.zeros_like(up), down, known, labels, 4.0).tolist() == [True, False, False,
                                                                                             False]


def test_the_gate_drops_the_classes_a_transfer_hurts_and_keeps_those_it_helps():
    """correct_with_known with `gate: held_out`, on a transfer that raises true positives of class 0 and true
    negatives of class 1 wherever it may (an oracle, right and wrong on purpose): class 0's moves stay, class 1's
    go, and the kept moves are exactly the ungated ones of the kept classes."""
    from dataclasses import dataclass

    from pipeline.correct import Correction, correct_with_known

    @dataclass(frozen=True)
    class RightAndWrong(T.CorrectTransfer):
        SECTION = "right_and_wrong"

        def apply(self, target, known, labels, embeddings, train):
            up = ~known & np.stack([labels[:, 0] > 0, labels[:, 1] == 0], 1)
            return T.LabelTransfer(up, np.zeros_like(up), {})

    rng = np.random.default_rng(0)
    labels = (rng.random((300, 2)) < 0.4).astype(np.int8)
    initial = (np.where(labels > 0, 0.5, -0.5) + rng.normal(0, 1.0, labels.shape)).astype(np.float32)
    known = rng.random(labels.shape) < 0.2
    plain, gated = (correct_with_known(initial, known, labels, Correction(calibration="none"),
                                       [RightAndWrong(gate=g)]) for g in ("none", "held_out"))
    assert plain.raised[:, 0].any() and plain.raised[:, 1].any()
    assert gated.store["right_and_wrong_gate"].tolist() == [1, 0]
    assert np.array_equal(gated.raised, plain.raised & np.array([True, False]))
    assert np.array_equal(gated.target[:, 0], plain.target[:, 0])
    assert np.array_equal(gated.target[:, 1], correct_with_known(initial, known, labels,
                                                                 Correction(calibration="none")).target[:, 1])
