import numpy as np
import pytest

from pipeline.correct import NEGATIVE_LOGIT, POSITIVE_LOGIT, apply_known_labels, correct_labels, top_beta_mask


def sig(z):
    return 1 / (1 + np.exp(-z))


def test_sqrt_correction_on_hand_made_row():
    z = np.array([[2.0, -1.0, 0.0, -3.0]])
    out = correct_labels(z, beta=1, method="sqrt")
    assert sig(out[0, 0]) == pytest.approx(np.sqrt(sig(2.0)), rel=1e-5)
    assert np.array_equal(out[0, 1:], z[0, 1:].astype(np.float32))
    out2 = correct_labels(z, beta=2, method="sqrt")
    assert sig(out2[0, 2]) == pytest.approx(np.sqrt(0.5), rel=1e-5)
    assert out2[0, 1] == -1.0 and out2[0, 3] == -3.0


@pytest.mark.parametrize("method", ["sqrt", "linear"])
@pytest.mark.parametrize("beta", [1, 2, 3])
def test_monotone_corrections_preserve_order_within_every_image(method, beta):
    z = np.random.default_rng(beta).normal(0, 3, size=(300, 6))
    out = correct_labels(z, beta, method)
    assert np.array_equal(np.argsort(-z, axis=1, kind="stable"), np.argsort(-out, axis=1, kind="stable"))
    assert (out >= z.astype(np.float32) - 1e-6).all()
    changed = out != z.astype(np.float32)
    assert (changed.sum(1) <= beta).all() and np.array_equal(changed, top_beta_mask(z, beta) & changed)


def test_hard_sets_confident_top_entries_positive():
    z = np.array([[2.0, 1.0, -1.0], [-0.5, -2.0, -3.0]])
    out = correct_labels(z, beta=1, method="hard", hard_threshold=0.5)
    assert out[0, 0] == pytest.approx(POSITIVE_LOGIT) and out[0, 1] == 1.0
    assert out[1, 0] == -0.5  # top-1 but below threshold: unchanged


def test_bad_method_is_rejected():
    with pytest.raises(ValueError, match="correct.method"):
        correct_labels(np.zeros((1, 2)), 1, "magic")


def test_known_labels_override():
    z = np.zeros((2, 2), np.float32)
    out = apply_known_labels(z, np.array([[1, 0], [1, 1]]), np.array([[1, 1], [0, 1]]))
    assert out[0].tolist() == [pytest.approx(POSITIVE_LOGIT), 0.0]
    assert out[1].tolist() == [pytest.approx(NEGATIVE_LOGIT), pytest.approx(POSITIVE_LOGIT)]


def test_median_calibration_moves_each_class_not_its_ranking():
    from pipeline.logits import calibrate_per_class
    from pipeline.metrics import mean_ap

    z = np.array([[3.0, 0.5], [1.0, 0.2], [2.0, 0.4], [0.5, 2.5]], np.float32)
    out = calibrate_per_class(z, margin=1.0)
    # medians 1.5 and 0.45: each class's median entry lands at −1, so typical negatives fall below 0.5
    assert out[:, 0].tolist() == pytest.approx([0.5, -1.5, -0.5, -2.0])
    assert out[:, 1].tolist() == pytest.approx([-0.95, -1.25, -1.05, 1.05])
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 1]])
    assert mean_ap(y, out) == mean_ap(y, z)


def test_test_rows_never_shape_the_train_labels():
    """The calibration's medians and the prototype bank's top-up come from the train rows: changing the test
    rows' scores and embeddings leaves every train row's corrected label as it was."""
    from pipeline.cooccurrence import CooccurrenceTransfer
    from pipeline.correct import Correction, correct_with_known
    from pipeline.prototypes import PrototypeTransfer
    from pipeline.transfer import ThresholdRule

    rng = np.random.default_rng(0)
    n, c, d = 60, 3, 8
    train = np.arange(n) < 40
    initial = rng.normal(size=(n, c)).astype(np.float32)
    emb, text = rng.normal(size=(n, d)), rng.normal(size=(c, d))
    labels = (rng.random((n, c)) < 0.4).astype(np.int8)
    known = (rng.random((n, c)) < 0.3) & train[:, None]
    other_initial, other_emb = initial.copy(), emb.copy()
    other_initial[~train] += 5.0  # test images that score far higher, and look elsewhere
    other_emb[~train] = rng.normal(size=(int((~train).sum()), d)) * 10
    correction = Correction(method="sqrt", calibration="median")
    protos = PrototypeTransfer(ThresholdRule("ema", batch_size=16), k=2, bank=30)
    outs = [correct_with_known(z, known, labels, correction, [protos, CooccurrenceTransfer(ThresholdRule("dtl"))],
                               embeddings=lambda e=e: (e, text), train=train)
            for z, e in ((initial, emb), (other_initial, other_emb))]
    assert np.array_equal(outs[0].target[train], outs[1].target[train])
    assert np.array_equal(outs[0].store["visual"], outs[1].store["visual"])
    # without the train rows named, the test rows shift the medians: the test above can fail
    shifted = [correct_with_known(z, known, labels, correction) for z in (initial, other_initial)]
    assert not np.array_equal(shifted[0].target[train], shifted[1].target[train])


def test_a_gated_transfer_reads_the_embeddings_once():
    """The held-out gate decides each fold with the method again; the (disk-read) embeddings are read once."""
    from pipeline.correct import Correction, correct_with_known
    from pipeline.prototypes import PrototypeTransfer
    from pipeline.transfer import ThresholdRule

    rng = np.random.default_rng(0)
    n, c, d = 60, 3, 8
    emb, text = rng.normal(size=(n, d)), rng.normal(size=(c, d))
    labels = (rng.random((n, c)) < 0.4).astype(np.int8)
    reads = []

    def embeddings():
        reads.append(1)
        return emb, text

    out = correct_with_known(rng.normal(size=(n, c)).astype(np.float32), rng.random((n, c)) < 0.3, labels,
                             Correction(), [PrototypeTransfer(ThresholdRule("ema", batch_size=16), k=2, bank=30,
                                                              gate="held_out", gate_folds=4)], embeddings)
    assert "prototypes_gate" in out.store and len(reads) == 1
