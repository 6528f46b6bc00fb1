import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score
from sklearn.metrics import hamming_loss as sk_hamming

from pipeline.metrics import (
    average_precision,
    classification_report,
    f1_scores,
    hamming_loss,
    inversions,
    mean_ap,
    top_k_predictions,
)


@pytest.mark.parametrize("seed", range(8))
def test_average_precision_matches_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.3
    s = np.round(rng.normal(size=200), 1)  # coarse rounding: many ties
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_mean_ap_skips_classes_without_positives():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.9, 0.1], [0.2, 0.5], [0.8, 0.3]])
    assert mean_ap(y, s) == pytest.approx(1.0)
    y2 = np.array([[1, 0], [0, 1], [1, 0]])
    s2 = np.array([[0.9, 0.9], [0.2, 0.1], [0.8, 0.3]])
    assert mean_ap(y2, s2) == pytest.approx((1.0 + average_precision_score(y2[:, 1], s2[:, 1])) / 2)


def test_inversions_brute_force():
    rng = np.random.default_rng(0)
    y = (rng.random((40, 3)) < 0.4).astype(int)
    s = np.round(rng.normal(size=(40, 3)), 1)
    brute = sum(int(s[i, c] > s[j, c]) for c in range(3) for i in range(40) for j in range(40)
                if y[i, c] == 0 and y[j, c] == 1)
    assert inversions(y, s) == brute
    assert inversions(y, y.astype(float)) == 0


def test_f1_and_hamming_match_sklearn():
    rng = np.random.default_rng(1)
    y = (rng.random((50, 5)) < 0.3).astype(int)
    p = (rng.random((50, 5)) < 0.3).astype(int)
    cf1, of1 = f1_scores(y, p)
    assert of1 == pytest.approx(f1_score(y, p, average="micro"))
    assert 0 <= cf1 <= 1
    assert hamming_loss(y, p) == pytest.approx(sk_hamming(y, p))


def test_top_k_and_report():
    s = np.array([[0.1, 0.9, 0.5, 0.2], [0.8, 0.1, 0.3, 0.7]])
    assert top_k_predictions(s, 2).tolist() == [[False, True, True, False], [True, False, False, True]]
    y = np.array([[0, 1, 0, 0], [1, 0, 0, 1]])
    r = classification_report(y, np.log(s / (1 - s)), threshold=0.6, top_k=2)
    assert r["map"] == pytest.approx(1.0) and r["hamming"] == pytest.approx(0.0)
    assert r["of1_top2"] == pytest.approx(2 * 0.75 * 1.0 / 1.75)


def test_transfer_precision_counts_moved_entries_and_how_many_were_right():
    from pipeline.evaluation import transfer_precision

    truth = np.array([[1, 0, 0], [0, 1, 1]])
    raised = np.array([[1, 1, 0], [0, 0, 1]], bool)  # 2 of 3 raised entries truly positive
    lowered = np.array([[0, 0, 1], [0, 1, 0]], bool)  # 1 of 2 lowered entries truly negative
    out = transfer_precision(truth, raised, lowered)
    assert out == {"raised": 3, "lowered": 2, "raised_right": pytest.approx(2 / 3), "lowered_right": 0.5}
    assert np.isnan(transfer_precision(truth, np.zeros_like(raised), lowered)["raised_right"])
