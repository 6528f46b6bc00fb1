import numpy as np
import pytest

from pipeline.masking import observed_mask


def test_ratio_zero_knows_nothing_and_test_is_never_known():
    is_train = np.array([True] * 80 + [False] * 20)
    assert observed_mask(100, 5, is_train, 0.0, 0).sum() == 0
    full = observed_mask(100, 5, is_train, 1.0, 0)
    assert full[:80].all() and not full[80:].any()


def test_ratio_fraction_seeded_and_nested():
    is_train = np.ones(2000, bool)
    a = observed_mask(2000, 10, is_train, 0.1, 3)
    assert a.mean() == pytest.approx(0.1, abs=0.01)
    assert np.array_equal(a, observed_mask(2000, 10, is_train, 0.1, 3))
    assert not np.array_equal(a, observed_mask(2000, 10, is_train, 0.1, 4))
    b = observed_mask(2000, 10, is_train, 0.3, 3)
    assert (b >= a).all()


def test_bad_ratio():
    with pytest.raises(ValueError, match="ratio"):
        observed_mask(3, 2, np.ones(3, bool), 1.5, 0)


def test_single_positive_labels_a_ratio_of_the_images_with_one_of_their_positives():
    """PLMCL's setting (000 §III.A): a labelled image knows exactly one true positive, drawn among its
    positives; everything else is unknown; labelled images are nested across ratios, with the same positive."""
    from pipeline.masking import MaskSettings, known_labels
    from pipeline.storage import DataError

    rng = np.random.default_rng(0)
    truth = (rng.random((3000, 8)) < 0.3).astype(np.int8)
    truth[:50] = 0  # images with no positive have none to show
    train = np.ones(3000, bool)
    train[2500:] = False
    known, labels = known_labels(MaskSettings(ratio=0.2, seed=5, known="single_positive"), truth, train)
    rows = known.sum(1)
    assert set(np.unique(rows)) == {0, 1}
    assert np.array_equal(labels, known) and (known <= truth).all()  # the one known entry is a true positive
    assert not known[2500:].any() and not known[:50].any()
    assert rows[50:2500].mean() == pytest.approx(0.2, abs=0.025)
    # the positive is drawn among the image's positives, not always the first of them
    picked = known.argmax(1)[rows > 0]
    first = truth.argmax(1)[rows > 0]
    assert (picked != first).mean() > 0.3
    more, _ = known_labels(MaskSettings(ratio=0.5, seed=5, known="single_positive"), truth, train)
    assert (more >= known).all() and more.sum() > 2 * known.sum()
    other, _ = known_labels(MaskSettings(ratio=0.2, seed=6, known="single_positive"), truth, train)
    assert not np.array_equal(other, known)
    with pytest.raises(DataError, match="ground truth"):
        known_labels(MaskSettings(ratio=0.2, known="single_positive"), None, train, (known, labels))


def _answers(path, rows):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.masking import ANSWERS_SCHEMA

    t0 = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    table = pa.Table.from_pylist([{"image_id": i, "class": c, "label": y,
                                   "answered_at": None if s is None else t0 + datetime.timedelta(seconds=s)}
                                  for i, c, y, s in rows], schema=ANSWERS_SCHEMA)
    pq.write_table(table, path)
    return path


def test_answers_are_known_labels_the_latest_winning(tmp_path):
    """known: answers reads a person's answers as known entries with their values; answers+random adds the
    seeded draw, the answer winning where both know an entry; the latest answer of an entry wins."""
    from pipeline.masking import MaskSettings, known_labels, read_answers

    ids, classes, train = ["a", "b", "c", "t"], ["cat", "dog"], np.array([True, True, True, False])
    truth = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.int8)
    path = _answers(tmp_path / "answers.parquet", [("a", "dog", 1, 10), ("b", "cat", 1, 5), ("b", "cat", 0, 20),
                                                   ("c", "dog", 0, None), ("c", "dog", 1, 1)])
    answers = read_answers(path, ids, classes, train)
    assert answers[0].tolist() == [[0, 1], [1, 0], [0, 1], [0, 0]]
    assert answers[1].tolist() == [[0, 1], [0, 0], [0, 1], [0, 0]]  # b/cat: 0 answered later; c/dog: timed wins
    known, labels = known_labels(MaskSettings(known="answers"), truth, train, answers)
    assert known.tolist() == answers[0].tolist() and labels.tolist() == answers[1].tolist()  # a/dog: 1, not truth
    both, both_labels = known_labels(MaskSettings(ratio=1.0, known="answers+random"), truth, train, answers)
    assert both.tolist() == [[1, 1], [1, 1], [1, 1], [0, 0]]  # every train entry, test never
    assert both_labels.tolist() == [[1, 1], [0, 1], [1, 1], [0, 0]]  # the truth, but where answered
    random, random_labels = known_labels(MaskSettings(ratio=1.0), truth, train, answers)
    assert random_labels.tolist() == [[1, 0], [0, 1], [1, 1], [0, 0]]  # known: random ignores the answers


@pytest.mark.parametrize("row, message", [
    (("zz", "cat", 1, 1), "row 2 names image 'zz'"),
    (("t", "cat", 1, 1), "row 2 names image 't', which is not a train image"),
    (("a", "cow", 1, 1), "row 2 names class 'cow'"),
    (("a", "cat", 2, 1), "row 2 has label 2"),
])
def test_an_answer_naming_what_is_not_there_is_an_error_naming_its_row(tmp_path, row, message):
    from pipeline.masking import read_answers
    from pipeline.storage import DataError

    path = _answers(tmp_path / "answers.parquet", [("a", "dog", 1, 0), row])
    with pytest.raises(DataError, match=message):
        read_answers(path, ["a", "t"], ["cat", "dog"], np.array([True, False]))


def test_random_known_labels_need_ground_truth():
    from pipeline.masking import MaskSettings, known_labels
    from pipeline.storage import DataError

    answers = (np.zeros((2, 2), np.int8), np.zeros((2, 2), np.int8))
    with pytest.raises(DataError, match="has none; set known: answers"):
        known_labels(MaskSettings(ratio=0.1), None, np.ones(2, bool), answers)
    assert known_labels(MaskSettings(known="answers"), None, np.ones(2, bool), answers)[0].sum() == 0


def test_reviewers_answers_merge_the_latest_winning_conflicts_listed(tmp_path):
    import subprocess

    import pyarrow.parquet as pq

    a = _answers(tmp_path / "a.parquet", [("x", "cat", 1, 10), ("y", "dog", 0, 10), ("z", "cat", 1, 3)])
    b = _answers(tmp_path / "b.parquet", [("x", "cat", 0, 20), ("y", "dog", 0, 5), ("z", "cat", 0, 3)])
    out = tmp_path / "merged.parquet"
    r = subprocess.run(["mlpl", "merge-answers", str(a), str(b), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    merged = {(row["image_id"], row["class"]): row["label"] for row in pq.read_table(out).to_pylist()}
    assert merged == {("x", "cat"): 0, ("y", "dog"): 0, ("z", "cat"): 0}  # x: b's is later; z: a tie, b is later
    assert "conflict: x / cat: answered [1, 0], kept 0" in r.stdout and "conflict: z / cat" in r.stdout
    assert "y / dog" not in r.stdout and "3 answered entries from 2 files, 2 answered differently" in r.stdout
    bad = subprocess.run(["mlpl", "merge-answers", str(tmp_path / "none.parquet")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no such answers file" in bad.stderr


def test_a_simulated_review_answers_the_least_sure_train_entries_from_the_truth():
    """known: uncertain: per class the logits are shifted so the median train entry sits at −1; with no answer
    yet the budget goes to the entries nearest 0 there, whatever a class's overall level, never to a test row;
    values from truth."""
    from pipeline.masking import MaskSettings, known_labels, review_order, reviewed_mask
    from pipeline.storage import DataError

    train = np.array([True] * 5 + [False])
    # class 0 lifted by +10 throughout (as Eq. 7 lifts every entry): its sure and unsure entries are the
    # same as class 1's, so a raw |logit| would pick class 1 alone
    z1 = np.array([-1.0, 0.5, -3.0, 5.0, 1.25, 0.0])  # train median 0.5 → shifted: −2.5, −1, −4.5, 3.5, −0.25
    logits = np.stack([z1 + 10.0, z1], axis=1).astype(np.float32)
    logits[5] = [11.5, 1.5]  # the test row sits at the boundary of both classes: never reviewed
    order = review_order(logits, train)
    assert len(order) == 10 and not {10, 11} & set(order)  # row 5's flat indices
    rows, cols = np.unravel_index(order, logits.shape)
    assert list(zip(rows[:6], cols[:6], strict=True)) == [(4, 0), (4, 1), (1, 0), (1, 1), (0, 0), (0, 1)]
    truth = np.array([[1, 0], [0, 1], [0, 0], [1, 1], [1, 0], [1, 1]], np.int8)
    known, labels = known_labels(MaskSettings(known="uncertain", budget=0.4), truth, train, initial=logits)
    assert known.sum() == 4 and not known[5].any()  # round(0.4 × 10) train entries
    assert (known == reviewed_mask(logits, train, 0.4, truth)).all()
    assert known[[1, 4]].all()  # one batch: the order's first four, rows 4 and 1 of both classes
    assert (labels == np.where(known > 0, truth, 0)).all()
    with pytest.raises(DataError, match="has none"):  # an oracle needs the ground truth
        known_labels(MaskSettings(known="uncertain", budget=0.4), None, train,
                     answers=(np.zeros((6, 2), np.int8),) * 2, initial=logits)
    with pytest.raises(ValueError, match="together"):  # answers without their labels would count as absent
        review_order(logits, train, answered=np.zeros(logits.shape, bool))


def test_a_rare_classs_unsure_entry_comes_before_a_frequent_ones():
    """At the same shifted logit (as unsure), the entry of the class with the smaller expected share of
    positives comes first: a wrong label moves a rare class's AP more; the classes then share the order by
    D'Hondt's rule (a class's k-th entry weighs 1/k)."""
    from pipeline.masking import review_order

    frequent = np.array([0.0, -4, -4, -4, -4, 4, -4])  # median −4 → shifted 3, −1 ×4, 7, −1: mean p 0.47
    rare = np.array([0.0, 4, 4, 4, 4, -4, -4])  # median 4 → shifted −5, −1 ×4, −9 ×2: mean p 0.15
    logits = np.stack([frequent, rare], axis=1).astype(np.float32)
    rows, cols = np.unravel_index(review_order(logits, np.ones(7, bool)), logits.shape)
    # rows 1–4 sit at −1 in both classes, gain p(1 − p) / share 1.31 (rare) and 0.42 (frequent); the rare
    # class's third (1.31 / 3) still outweighs the frequent one's first, its fourth (1.31 / 4) not
    assert list(zip(rows[:8], cols[:8], strict=True)) == [(1, 1), (2, 1), (3, 1), (1, 0),
                                                           (4, 1), (2, 0), (3, 0), (4, 0)]


def test_one_unsure_class_does_not_take_the_whole_review():
    """A class with many entries at its P(present) ½ and one whose unsure entries are less unsure: the order
    takes from both, the unsurer class more; the answers a class has already had count against its next."""
    from pipeline.masking import review_order

    # raw 0 × 60, −1 × 140: median −1, shifted 0 and −1 (gain 0.74); raw 0 × 20, −5 × 180: shifted 4 and −1
    # (gain 0.58); by gain alone the first class's 60 would all come first
    unsure = np.array([0.0] * 60 + [-1.0] * 140)
    less = np.array([0.0] * 20 + [-5.0] * 180)
    logits = np.stack([unsure, less], axis=1).astype(np.float32)
    train = np.ones(200, bool)
    cols = np.unravel_index(review_order(logits, train), logits.shape)[1]
    assert 20 < (cols[:40] == 0).sum() < 30  # shared by the gains' ratio

    twins = np.stack([less, less], axis=1).astype(np.float32)
    answered = np.zeros(twins.shape, bool)
    answered[[0, 1], 0] = True  # two answers of class 0, as its labels have them (present, at shifted 4)
    order = review_order(twins, train, answered, answered.astype(np.int8))
    # without them the tie would go to class 0 (row-major); with them class 1 gets its first two first
    assert np.unravel_index(order[:2], twins.shape)[1].tolist() == [1, 1]


def test_the_first_entries_of_the_order_are_the_head_of_the_whole_order():
    """`limit` (the page's 1,000 cards, a simulated review's batch) gives the whole order's first entries, ties
    included: rounded logits tie within a class, and saturated ones (gain 0, all tied at the tail) are ordered
    row-major; the queue of one class with a limit is that class's part of the whole queue, cut."""
    from pipeline.masking import review_order
    from pipeline.review import review_queue

    rng = np.random.default_rng(3)
    for case in range(12):
        n, c = int(rng.integers(5, 60)), int(rng.integers(1, 6))
        logits = np.round(rng.normal(0, 3, (n, c))).astype(np.float32)
        if case % 2:
            logits[rng.random((n, c)) < 0.4] = 60.0  # σ = 1 in float64: no gain, all tied
        train = rng.random(n) < 0.8
        answered = rng.random((n, c)) < 0.2
        labels = (answered & (rng.random((n, c)) < 0.5)).astype(np.int8)
        whole = review_order(logits, train, answered, labels)
        for k in (0, 1, 3, 7, len(whole) - 1, len(whole) + 5):
            assert np.array_equal(review_order(logits, train, answered, labels, limit=k), whole[:max(k, 0)])
        queue = review_queue(logits, answered, labels)
        for k in (1, 4, 50):
            assert review_queue(logits, answered, labels, class_index=c - 1, limit=k) == [
                e for e in queue if e[1] == c - 1][:k]


def test_answers_recalibrate_their_class_only():
    """A class whose answers say present at and below its shifted 0 gets a higher P(present) there than σ(x); a
    class without answers keeps σ(x); answers of one kind never turn the order of a class's logits round."""
    from pipeline.logits import sigmoid
    from pipeline.masking import answer_calibration

    x = np.tile(np.linspace(-4, 4, 9)[:, None], (1, 2))
    answered = np.zeros((9, 2), bool)
    answered[[2, 3, 4], 0] = True  # x = −2, −1, 0: all present
    labels = answered.astype(np.int8)
    p = answer_calibration(x, answered, labels)
    assert (p[:, 1] == sigmoid(x[:, 1])).all()
    assert (p[2:5, 0] > sigmoid(x[2:5, 0]) + 0.1).all() and p[2, 0] > 0.5  # where the answers are
    assert (np.diff(p[:, 0]) > 0).all()


def test_answers_a_rare_class_separates_well_calibrate_it_and_do_not_run_off():
    """A rare class whose answered positives sit far above its shifted 0 and whose negatives reach up to them
    (as a class's known entries do when its pseudo labels rank well): the fit must put its answered positives
    near P = 1 and its negatives near 0. An undamped Newton from (a, b) = (1, 0) overshot here to a ≈ 0.1,
    b ≈ −200 and gave every entry P ≈ 0."""
    from pipeline.masking import answer_calibration

    x = np.concatenate([np.linspace(-5, 4, 85), np.linspace(4.5, 9, 15)])[:, None]
    labels = (np.arange(100) >= 85).astype(np.int8)[:, None]
    p = answer_calibration(x, np.ones((100, 1), bool), labels)[:, 0]
    assert p[85:].mean() > 0.8 and p[:85].mean() < 0.1
    assert p[84] < 0.5 < p[86]  # its 0.5 falls where the answers turn present
    assert (np.diff(p) >= 0).all()


def test_a_review_in_rounds_finds_where_a_frequent_class_turns_absent():
    """A class present in three quarters of the images: the median shift puts its 0.5 far too high. Answered
    in one batch, the budget goes to entries that are all present; one at a time, the answers move the order
    down to the class's real boundary and the review finds absent entries there."""
    from pipeline.masking import reviewed_mask

    z = np.linspace(-6, 6, 40).astype(np.float32)[:, None]
    truth = (z > -3).astype(np.int8)
    train = np.ones(40, bool)
    once = reviewed_mask(z, train, 6 / 40, truth, batch=6).astype(bool)[:, 0]
    rounds = reviewed_mask(z, train, 6 / 40, truth, batch=1).astype(bool)[:, 0]
    assert once.sum() == rounds.sum() == 6
    near = np.abs(z[:, 0] + 3) < 1.5  # within 1.5 of the class's real boundary
    assert not (once & near).any() and not (once & (truth[:, 0] == 0)).any()
    assert (rounds & near).sum() >= 3 and (rounds & (truth[:, 0] == 0)).sum() >= 1
