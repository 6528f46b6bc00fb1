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


@pytest.mark.parametrize("calibration", ["median", "known"])
def test_test_rows_never_shape_the_train_labels(calibration):
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
    correction = Correction(method="sqrt", calibration=calibration)
    protos = PrototypeTransfer(ThresholdRule("ema", batch_size=16), k=2, bank=30)
    outs = [correct_with_known(z, known, labels, correction, [protos, CooccurrenceTransfer(ThresholdRule("dtl"))],
                               embeddings=lambda e=e: (e, text), train=train)
            for z, e in ((initial, emb), (other_initial, other_emb))]
    assert np.array_equal(outs[0].target[train], outs[1].target[train])
    assert np.array_equal(outs[0].store["visual"], outs[1].store["visual"])
    # without the train rows named, the test rows shift the medians: the test above can fail
    shifted = [correct_with_known(z, known, labels, correction) for z in (initial, other_initial)]
    assert not np.array_equal(shifted[0].target[train], shifted[1].target[train])


def test_known_calibration_fits_each_class_to_its_known_entries():
    """`calibration: known`: a class whose entries are present with probability σ(2·z − 3) at their shifted logit
    z gets a·z + b with (a, b) near (2, −3), fitted on its random known entries, so σ of an unknown entry's
    label is its chance of being present; no class's ranking moves; a class with too few known positives keeps
    the median shift; with nothing known the calibration is the median's, to the bit."""
    from pipeline.correct import KNOWN_MIN_EACH, Correction, correct_with_known
    from pipeline.logits import calibrate_per_class, sigmoid

    rng = np.random.default_rng(0)
    n = 20000
    initial = rng.normal(0.7, 2.0, size=(n, 2)).astype(np.float32)
    z = calibrate_per_class(initial, 1.0)[:, 0]  # the median shift, which `known` starts from
    labels = np.stack([rng.random(n) < sigmoid(2 * z - 3), np.arange(n) < 40], 1).astype(np.int8)
    known = rng.random((n, 2)) < 0.1
    known[:40, 1] = np.arange(40) < KNOWN_MIN_EACH - 1  # class 1: too few known positives to fit
    median = correct_with_known(initial, known, labels, Correction(method="none", calibration="median")).target
    out = correct_with_known(initial, known, labels, Correction(method="none", calibration="known"))
    fitted = out.target
    assert out.calibrated.tolist() == [True, False]
    unknown = ~known[:, 0]
    a, b = np.polyfit(z[unknown], fitted[unknown, 0], 1)
    assert abs(a - 2) < 0.3 and abs(b + 3) < 0.4
    order = np.argsort(z[unknown], kind="stable")
    assert (np.diff(fitted[unknown, 0][order]) >= 0).all()  # no entry of the class overtakes another
    assert abs(sigmoid(fitted[unknown, 0]).mean() - labels[unknown, 0].mean()) < 0.02  # calibrated
    assert abs(sigmoid(median[unknown, 0]).mean() - labels[unknown, 0].mean()) > 0.05  # the shift was not
    assert np.array_equal(fitted[:, 1], median[:, 1])  # too few known positives: the shift stays
    assert np.array_equal(fitted[known], median[known])  # known entries at ±9.2 either way
    nothing = np.zeros_like(known)
    assert np.array_equal(correct_with_known(initial, nothing, labels, Correction(calibration="known")).target,
                          correct_with_known(initial, nothing, labels, Correction(calibration="median")).target)


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


def test_the_printed_figures_about_train_labels_read_train_rows_only():
    """`mlpl correct`'s console figures (inversions, share of raised entries truly positive, of lowered ones
    truly negative) come from the train rows: any truth on the test rows leaves them as they were."""
    from pipeline.correct import Corrected, train_label_figures

    rng = np.random.default_rng(0)
    n, c = 40, 3
    train = np.arange(n) < 25
    truth = (rng.random((n, c)) < 0.4).astype(np.int8)
    before = rng.normal(size=(n, c))
    after = before + rng.normal(size=(n, c))
    moved = Corrected(after, rng.random((n, c)) < 0.3, rng.random((n, c)) < 0.3, {})
    figures = train_label_figures(truth, before, moved, train)
    assert None not in figures.values()
    other = truth.copy()
    other[~train] = 1 - other[~train]  # every test label flipped
    assert train_label_figures(other, before, moved, train) == figures
    other[0] = 1 - other[0]  # one train image's labels flipped: the figures see it
    assert train_label_figures(other, before, moved, train) != figures
    still = Corrected(after, np.zeros((n, c), bool), moved.lowered & ~train[:, None], {})
    assert train_label_figures(truth, before, still, train)["raised_truly_positive"] is None
    assert train_label_figures(truth, before, still, train)["lowered_truly_negative"] is None
