"""Which labels are known: the partial-label setting.

Top-level `known` says where the known train entries come from:
- `random` (the default): each train entry is known with probability `ratio` (seeded by `seed`), its value
  the manifest's label;
- `answers`: the entries a person answered (data/answers.parquet, e.g. from a review of the pseudo labels),
  their value the answer;
- `answers+random`: both; where an answered entry is also drawn, the answer wins;
- `uncertain`: the simulation of a review (issue 27): the `budget` share of train entries a review would
  show first, the ones the initial estimate is least sure of (`review_order`), answered from the ground
  truth by an oracle person. It ranks from the `init` stage's labels, upstream of `mask`, so the DAG stays
  acyclic (a real review ranks the refined labels of a previous run).
Known entries are known wherever they came from: every partial-label method and the known-label baseline
use them alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.logits import calibrate_per_class
from pipeline.settings import Settings, setting
from pipeline.storage import DataError

KNOWN_SOURCES = ("random", "answers", "answers+random", "uncertain")
# the per-class shift of `review_order`: a class's median train entry sits at −REVIEW_MARGIN, as the default
# `correct.margin` puts it in the labels `correct` writes (before their top-β correction)
REVIEW_MARGIN = 1.0
# data/answers.parquet: one row per answered (image, class) entry; the latest answer of an entry wins
ANSWERS_SCHEMA = pa.schema([("image_id", pa.string()), ("class", pa.string()), ("label", pa.int8()),
                            ("answered_at", pa.timestamp("ms", tz="UTC"))])


@dataclass(frozen=True)
class MaskSettings(Settings):
    """The top-level keys of the known labels."""

    ratio: float = setting(0.0, ge=0.0, le=1.0)  # fraction of train label entries drawn as known (random)
    seed: int = setting(0)
    known: str = setting("random", choices=KNOWN_SOURCES)  # where known entries come from
    budget: float = setting(0.0, ge=0.0, le=1.0)  # share of train entries answered (known: uncertain)

    @property
    def draws(self) -> bool:
        return self.known in ("random", "answers+random")

    @property
    def reads_answers(self) -> bool:
        return self.known in ("answers", "answers+random")

    @property
    def reviews(self) -> bool:
        """The simulated review: the entries the initial estimate is least sure of, answered by an oracle."""
        return self.known == "uncertain"


def review_order(logits: np.ndarray, is_train: np.ndarray) -> np.ndarray:
    """Train entries (flat indices into [N, C], row-major), the least sure first: what a review shows first.

    Per class the logits are shifted as `correct.calibration: median` shifts them (the class's median train
    entry at −REVIEW_MARGIN), so a class whose every entry Eq. 7 lifts is not taken for sure; an entry's
    certainty is then the distance of its shifted logit from 0, the labels' 0.5. Ties keep row-major order."""
    train = np.asarray(is_train, bool)
    margin = np.abs(calibrate_per_class(logits, REVIEW_MARGIN, rows=train))
    flat = np.where(train[:, None], margin, np.inf).ravel()
    order = np.argsort(flat, kind="stable")
    return order[: int(train.sum()) * logits.shape[1]]


def reviewed_mask(logits: np.ndarray, is_train: np.ndarray, budget: float) -> np.ndarray:
    """int8 [N, C]: 1 on the round(budget × train entries) entries `review_order` puts first."""
    train = np.asarray(is_train, bool)
    n = int(round(budget * int(train.sum()) * logits.shape[1]))
    known = np.zeros(logits.shape, np.int8)
    known.ravel()[review_order(logits, train)[:n]] = 1
    return known


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
    for `known: uncertain`, the `budget` entries `review_order` ranks first over the `initial` logits,
    valued from `truth`."""
    n, c = (truth.shape if truth is not None else answers[0].shape)
    known, labels = np.zeros((n, c), np.int8), np.zeros((n, c), np.int8)
    if settings.reviews:
        if truth is None:
            raise DataError("known: uncertain answers the reviewed entries from the ground truth, and this "
                            "dataset has none; review them yourself (known: answers)")
        known = reviewed_mask(initial, is_train, settings.budget)
        return known, np.where(known > 0, (truth > 0).astype(np.int8), 0).astype(np.int8)
    if settings.draws and settings.ratio > 0:
        if truth is None:
            raise DataError(f"ratio {settings.ratio} draws known labels from the ground truth, and this dataset "
                            "has none; set known: answers (answers by a person) or ratio: 0")
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
