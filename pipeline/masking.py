"""Which labels are known: the partial-label setting.

Top-level `known` says where the known train entries come from:
- `random` (the default): each train entry is known with probability `ratio` (seeded by `seed`), its value
  the manifest's label;
- `answers`: the entries a person answered (data/answers.parquet, e.g. from a review of the pseudo labels),
  their value the answer;
- `answers+random`: both; where an answered entry is also drawn, the answer wins;
- `single_positive`: the setting of PLMCL (summary paper 000 §III.A: "a fraction of images carries a single
  observed positive and the remainder are entirely unlabeled"): a seeded `ratio` share of the train images
  each knows one of its true positives, drawn uniformly; every other entry is unknown. An image without a
  positive stays unlabelled;
- `uncertain`: the simulation of a review (issue 27): the `budget` share of train entries a review would
  show first, the ones whose answer would help most (`review_order`: the least sure, a rare class's first,
  the classes sharing the budget, ranked again with the answers so far), answered from the ground truth by
  an oracle person. It ranks from the `init` stage's labels, upstream of `mask`, so the DAG stays acyclic
  (a real review ranks the refined labels of a previous run).
Known entries are known wherever they came from: every partial-label method and the known-label baseline
use them alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.calibration import calibrate_to_known
from pipeline.logits import calibrate_per_class, sigmoid
from pipeline.settings import Settings, setting
from pipeline.storage import DataError

KNOWN_SOURCES = ("random", "answers", "answers+random", "single_positive", "uncertain")
# the per-class shift of `review_order`: a class's median train entry sits at −REVIEW_MARGIN, as the default
# `correct.margin` puts it in the labels `correct` writes (before their top-β correction)
REVIEW_MARGIN = 1.0
# the review page ranks its queue again after this many answers, and a simulated review (`known: uncertain`)
# answers its budget in batches of this size; chosen on the contexts benchmark's dataset seed 0 (README)
REVIEW_BATCH = 20
# data/answers.parquet: one row per answered (image, class) entry; the latest answer of an entry wins
ANSWERS_SCHEMA = pa.schema([("image_id", pa.string()), ("class", pa.string()), ("label", pa.int8()),
                            ("answered_at", pa.timestamp("ms", tz="UTC"))])


@dataclass(frozen=True)
class MaskSettings(Settings):
    """The top-level keys of the known labels."""

    # fraction of train label entries drawn as known (random); of train images with one known positive
    # (single_positive)
    ratio: float = setting(0.0, ge=0.0, le=1.0)
    seed: int = setting(0)
    known: str = setting("random", choices=KNOWN_SOURCES)  # where known entries come from
    budget: float = setting(0.0, ge=0.0, le=1.0)  # share of train entries answered (known: uncertain)

    @property
    def draws(self) -> bool:
        return self.known in ("random", "answers+random")

    @property
    def single_positive(self) -> bool:
        return self.known == "single_positive"

    @property
    def knows_nothing(self) -> bool:
        """No entry can be known: the known labels come from `ratio` alone, and it is 0."""
        return self.known in ("random", "single_positive") and self.ratio == 0

    @property
    def reads_answers(self) -> bool:
        return self.known in ("answers", "answers+random")

    @property
    def reviews(self) -> bool:
        """The simulated review: the entries the initial estimate is least sure of, answered by an oracle."""
        return self.known == "uncertain"


def answer_calibration(x: np.ndarray, answered: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """P(present) [N, C] of every entry, per class σ(a·x + b) fitted to the class's answered entries.

    `x` [N, C] are the review's shifted logits (`review_order`); `answered` bool [N, C], `labels` their 0/1
    answers. The fit (`calibrate_to_known`, on every class with an answer) is a logistic regression on x with a
    Gaussian prior around (a, b) = (1, 0), at its posterior mode with a ≥ MIN_SLOPE, so a class without answers
    keeps σ(x), and the answers move it to where they put the class's 0.5: a class whose answers near its
    shifted 0 are mostly present has more positives than the median shift assumed."""
    z, _ = calibrate_to_known(np.asarray(x, np.float64), answered, labels, min_each=0)
    return sigmoid(np.clip(z, -50.0, 50.0))


def review_priority(logits: np.ndarray, is_train: np.ndarray, answered: np.ndarray | None = None,
                    labels: np.ndarray | None = None, depth: int | None = None) -> np.ndarray:
    """float64 [N, C]: how much each unanswered train entry's answer would help (`review_order` says how it is
    ranked), −inf where an entry is answered or not a train entry. With `depth`, only each class's first
    `depth` entries (and any tied with the last of them) get theirs, enough for the order's first `depth`:
    a class's priorities fall strictly along its seats wherever its gain is above 0, so an entry further
    down its class is never before them (a COCO-sized [N, C] no longer sorts every class whole)."""
    if (answered is None) != (labels is None):
        raise ValueError("review_order takes the answered entries and their labels together")
    train = np.asarray(is_train, bool)
    answered = np.zeros(np.shape(logits), bool) if answered is None else np.asarray(answered, bool)
    labels = np.zeros(np.shape(logits), np.int8) if labels is None else labels
    x = calibrate_per_class(logits, REVIEW_MARGIN, rows=train)
    answered_train = answered & train[:, None]
    p = answer_calibration(x, answered_train, labels)
    share = p[train].mean(0, keepdims=True) if train.any() else np.ones((1, p.shape[1]))
    gain = p * (1 - p) / np.maximum(share, 1e-6)
    open_ = train[:, None] & ~answered
    had = answered_train.sum(0)
    # per class, its open entries by gain (ties row-major), the j-th (from 0) after the class's a answers
    # weighted 1 / (a + j + 1)
    keys = np.ascontiguousarray(np.where(open_, -gain, np.inf).T)  # a class's entries contiguous: fast sorts
    priority = np.full(gain.shape, -np.inf)
    for c, n_open in enumerate(open_.sum(0).tolist()):
        k = n_open if depth is None else max(0, min(int(depth), n_open))
        if k == 0:
            continue
        rows = smallest_first(keys[c], k)
        priority[rows, c] = gain[rows, c] / (had[c] + np.arange(len(rows), dtype=np.float64) + 1)
    return priority


def smallest_first(keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest of the 1-d `keys` (k ≥ 1) and of every one tied with the k-th, in the order of
    a stable sort: the head of that sort, found by a partition."""
    rows = np.flatnonzero(keys <= np.partition(keys, k - 1)[k - 1])
    return rows[np.argsort(keys[rows], kind="stable")]


def first_by_priority(priority: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Flat indices of the entries of `priority` above −inf, the highest first (ties in index order), at most
    `limit` of them: the head of the full stable sort."""
    keys = -np.asarray(priority, np.float64).ravel()
    n = int(np.isfinite(keys).sum())
    k = n if limit is None else max(0, min(int(limit), n))
    return smallest_first(keys, k)[:k] if k else np.zeros(0, np.intp)


def review_order(logits: np.ndarray, is_train: np.ndarray, answered: np.ndarray | None = None,
                 labels: np.ndarray | None = None, limit: int | None = None) -> np.ndarray:
    """Unanswered train entries (flat indices into [N, C], row-major), the one whose answer would help most
    first: what a review shows first (only the first `limit` if given).

    Per class the logits are shifted as `correct.calibration: median` shifts them (the class's median train
    entry at −REVIEW_MARGIN), so a class whose every entry Eq. 7 lifts is not taken for sure, and the answers
    so far (`answered`, `labels`) recalibrate that shift into P(present) (`answer_calibration`). An entry's
    gain is p(1 − p), how unsure the labels are of it, over its class's expected share of positives (the
    mean p over the train entries): a class's AP is the mean precision over its positives, so a wrong label
    moves a rare class's AP more. The classes share the review as seats are apportioned by D'Hondt's rule:
    a class's k-th answer (counting those it has) weighs its gain by 1/k, because what a class's answers
    mostly buy is its calibration (`correct.calibration: known` fits each class to its known entries), which
    its first answers inform most; without it one class whose P(present) sits near ½ over many entries took
    most of a 2 % review (README). Answered entries leave the order; ties keep row-major order."""
    return first_by_priority(review_priority(logits, is_train, answered, labels, depth=limit), limit)


def reviewed_mask(logits: np.ndarray, is_train: np.ndarray, budget: float, truth: np.ndarray,
                  batch: int = REVIEW_BATCH) -> np.ndarray:
    """int8 [N, C]: the round(budget × train entries) entries a simulated review answers, `batch` at a time:
    each batch is the first entries of `review_order` given the answers before it (from `truth`, an oracle
    person), as the review page ranks again after every `batch` answers."""
    train = np.asarray(is_train, bool)
    n = int(round(budget * int(train.sum()) * logits.shape[1]))
    known = np.zeros(logits.shape, bool)
    labels = (np.asarray(truth) > 0).astype(np.int8)
    for start in range(0, n, batch):
        take = min(batch, n - start)
        known.ravel()[review_order(logits, train, known, np.where(known, labels, 0), limit=take)] = True
    return known.astype(np.int8)


def observed_mask(n_images: int, n_classes: int, is_train: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """int8 [N, C]: 1 where a label is known. Each train entry is known with probability `ratio`,
    positives and negatives alike; test rows are never known. ratio 0 → nothing known.

    The draw for an entry does not depend on ratio, so the labels known at r=0.1 are a subset of
    those known at r=0.3: ablations over ratio are nested.
    """
    MaskSettings(ratio, seed)  # the one definition of the valid range
    u = np.random.default_rng(np.random.SeedSequence([seed, 2])).random((n_images, n_classes))
    known = (u < ratio) & np.asarray(is_train, dtype=bool)[:, None]
    return known.astype(np.int8)


def single_positive_mask(truth: np.ndarray, is_train: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """int8 [N, C]: 1 at one true positive of each labelled image, 0 elsewhere. A train image is labelled with
    probability `ratio`; its known positive is drawn uniformly among its true positives (an image without one
    stays unlabelled). Both draws depend on neither `ratio` nor each other, so the images labelled at 0.1 are
    a subset of those at 0.3, each with the same positive: ablations over ratio are nested."""
    MaskSettings(ratio, seed)  # the one definition of the valid range
    positive = np.asarray(truth) > 0
    n = positive.shape[0]
    labelled = np.random.default_rng(np.random.SeedSequence([seed, 3])).random(n) < ratio
    labelled &= np.asarray(is_train, bool) & positive.any(1)
    # a uniform pick among each image's positives: the positive with the largest uniform key
    keys = np.random.default_rng(np.random.SeedSequence([seed, 4])).random(positive.shape)
    pick = np.argmax(np.where(positive, keys, -1.0), axis=1)
    known = np.zeros(positive.shape, np.int8)
    rows = np.flatnonzero(labelled)
    known[rows, pick[rows]] = 1
    return known


def empty_answers() -> pa.Table:
    return ANSWERS_SCHEMA.empty_table()


def read_answers(path: str | Path, image_ids: list[str], classes: list[str], is_train: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(answered int8 [N, C], label int8 [N, C]) from an answers file. A row naming an image that is not in
    the manifest or not a train image, a class that is not the dataset's, or a label other than 0 / 1 is an
    error that names the row (numbered from 1). An entry answered twice takes its latest answer."""
    table = pq.read_table(path)
    missing = [c for c in ANSWERS_SCHEMA.names if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: answers need the columns {ANSWERS_SCHEMA.names}, missing {missing}")
    row_of = {image_id: i for i, image_id in enumerate(image_ids)}
    class_of = {name: c for c, name in enumerate(classes)}
    train = np.asarray(is_train, bool)
    for n, row in enumerate(table.select(["image_id", "class", "label"]).to_pylist(), start=1):
        i, c, label = row_of.get(row["image_id"]), class_of.get(row["class"]), row["label"]
        if i is None or not train[i]:
            raise DataError(f"{path}: row {n} names image {row['image_id']!r}, which is not a train image of the "
                            "manifest")
        if c is None:
            raise DataError(f"{path}: row {n} names class {row['class']!r}, which is not one of {classes}")
        if label not in (0, 1):
            raise DataError(f"{path}: row {n} has label {label!r}; an answer is 0 or 1")
    answered = np.zeros((len(image_ids), len(classes)), np.int8)
    labels = np.zeros_like(answered)
    latest, _ = merge_answers([table])  # one answer per entry, by the one latest-answer-wins rule
    for row in latest.select(["image_id", "class", "label"]).to_pylist():
        i, c = row_of[row["image_id"]], class_of[row["class"]]
        answered[i, c], labels[i, c] = 1, row["label"]
    return answered, labels


def known_labels(settings: MaskSettings, truth: np.ndarray | None, is_train: np.ndarray,
                 answers: tuple[np.ndarray, np.ndarray] | None = None, initial: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(known int8 [N, C], their labels int8 [N, C], 0 where unknown): the random draw (`ratio`, `seed`,
    values from `truth`) and/or the answers (answered, label), answers winning where both know an entry; or,
    for `known: uncertain`, the `budget` entries a simulated review of the `initial` logits answers
    (`reviewed_mask`), valued from `truth`; for `known: single_positive`, one true positive of each image of
    a `ratio` share (`single_positive_mask`)."""
    n, c = (truth.shape if truth is not None else answers[0].shape)
    known, labels = np.zeros((n, c), np.int8), np.zeros((n, c), np.int8)
    if settings.reviews:
        if truth is None:
            raise DataError("known: uncertain answers the reviewed entries from the ground truth, and this "
                            "dataset has none; review them yourself (known: answers)")
        known = reviewed_mask(initial, is_train, settings.budget, truth)
        return known, np.where(known > 0, (truth > 0).astype(np.int8), 0).astype(np.int8)
    if (settings.draws or settings.single_positive) and settings.ratio > 0 and truth is None:
        raise DataError(f"ratio {settings.ratio} draws known labels from the ground truth, and this dataset "
                        "has none; set known: answers (answers by a person) or ratio: 0")
    if settings.single_positive and settings.ratio > 0:
        known = single_positive_mask(truth, is_train, settings.ratio, settings.seed)
        return known, known.copy()
    if settings.draws and settings.ratio > 0:
        known = observed_mask(n, c, is_train, settings.ratio, settings.seed)
        labels = np.where(known > 0, (truth > 0).astype(np.int8), 0).astype(np.int8)
    if settings.reads_answers and answers is not None:
        answered, answer = answers
        known = np.maximum(known, answered).astype(np.int8)
        labels = np.where(answered > 0, answer, labels).astype(np.int8)
    return known, labels


def merge_answers(tables: list[pa.Table]) -> tuple[pa.Table, list[dict]]:
    """Several reviewers' answers as one table: per (image, class) entry the latest answer wins (a later
    table wins a tie). Returns (the merged table, sorted by image and class; the conflicts: every entry
    answered differently, as {"image_id", "class", "labels": the answers in table order, "kept"})."""
    latest: dict[tuple[str, str], tuple[int, int, dict]] = {}
    seen: dict[tuple[str, str], list[int]] = {}
    for t, table in enumerate(tables):
        missing = [c for c in ANSWERS_SCHEMA.names if c not in table.column_names]
        if missing:
            raise DataError(f"answers table {t + 1}: needs the columns {ANSWERS_SCHEMA.names}, missing {missing}")
        table = table.select(ANSWERS_SCHEMA.names).cast(ANSWERS_SCHEMA)
        stamps = table.column("answered_at").cast(pa.int64()).fill_null(np.iinfo(np.int64).min + 1).to_numpy()
        for row, stamp in zip(table.to_pylist(), stamps, strict=True):
            entry = (row["image_id"], row["class"])
            seen.setdefault(entry, []).append(row["label"])
            if entry not in latest or (int(stamp), t) >= latest[entry][:2]:
                latest[entry] = (int(stamp), t, row)
    rows = [latest[entry][2] for entry in sorted(latest)]
    conflicts = [{"image_id": i, "class": c, "labels": labels, "kept": latest[(i, c)][2]["label"]}
                 for (i, c), labels in sorted(seen.items()) if len(set(labels)) > 1]
    return pa.Table.from_pylist(rows, schema=ANSWERS_SCHEMA), conflicts
