import numpy as np

from pipeline.heads import HeadTraining, predict_head, train_em_head, train_soft_head


def test_soft_head_learns_separable_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = (x[:, :2] > 0).astype(np.float32)
    head = train_soft_head(x, np.where(y > 0, 5.0, -5.0), HeadTraining(epochs=30, lr=0.05))
    pred = predict_head(head, x) > 0
    assert (pred == (y > 0)).mean() > 0.95


def test_em_keeps_frozen_entries_and_moves_others_towards_the_head():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    truth = (x[:, :1] > 0).astype(np.float32)
    z = np.where(truth > 0, 3.0, -3.0).astype(np.float32)
    noisy = z.copy()
    flip = rng.random(300) < 0.15
    noisy[flip] = -noisy[flip]  # 15 % wrong pseudo labels
    training = HeadTraining(epochs=40, lr=0.05, estimator_lr=0.05)
    _, refined = train_em_head(x, noisy, training)
    before = ((noisy > 0) == (truth > 0)).mean()
    after = ((refined > 0) == (truth > 0)).mean()
    assert after > before + 0.05  # the head, fit to mostly-right labels, pulls wrong entries over
    frozen = np.zeros_like(noisy, bool)
    frozen[:10] = True
    _, refined = train_em_head(x, noisy, training, frozen=frozen)
    assert np.array_equal(refined[:10], noisy[:10]) and not np.array_equal(refined[10:], noisy[10:])
