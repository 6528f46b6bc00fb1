"""The review of the pseudo labels by a person (issue 27): which train entries to show first, and a person's
answers kept on disk as they come.

The order is `masking.review_order`, the one definition of "whose answer helps most" that `known: uncertain`
simulates: per class the logits are shifted so the class's median train entry sits at −1, the answers so far
recalibrate that shift into P(present), and the entries with the largest p(1 − p) over their class's share
of positives come first (the least sure, a rare class's first), the classes sharing the queue by D'Hondt's
rule (a class's k-th answer weighs its gain by 1/k). An answered entry leaves the queue; each
request ranks the rest with the answers so far, and the page asks again every `masking.REVIEW_BATCH`
answers. The page shows the refined labels of the last run (`data/labels/refined.parquet`); the answers
file is the one `mask` reads with `known: answers` (columns in docs/outputs.md), so a fix flows back into
the DAG through `dvc repro`.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.logits import sigmoid
from pipeline.masking import ANSWERS_SCHEMA, empty_answers, first_by_priority, merge_answers, review_priority
from pipeline.storage import DataError, atomic_path


def review_queue(logits: np.ndarray, answered: np.ndarray, labels: np.ndarray,
                 class_index: int | None = None, limit: int | None = None) -> list[tuple[int, int]]:
    """(row, class) of the unanswered entries, the one whose answer helps most first (`review_order` over every
    row of `logits`, [N, C], with the answers `answered` bool [N, C] and their 0/1 `labels`); only class
    `class_index` if given; the first `limit` if given (`queue_length` counts them all)."""
    priority = review_priority(logits, np.ones(len(logits), bool), answered, labels, depth=limit)
    if class_index is not None:  # one class's entries keep their order in the whole queue
        priority = np.where(np.arange(priority.shape[1]) == class_index, priority, -np.inf)
    rows, cols = np.unravel_index(first_by_priority(priority, limit), logits.shape)
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


def queue_length(answered: np.ndarray, class_index: int | None = None) -> int:
    """How many entries `review_queue` holds in all: the unanswered ones (of class `class_index` if given)."""
    answered = np.asarray(answered, bool)
    return int((~(answered if class_index is None else answered[:, class_index])).sum())


class AnswerBook:
    """A person's answers (the answers file), kept in memory and on disk: `add` returns only once the answer
    is on disk. Each write replaces the file atomically (a temporary sibling, fsync'd, then renamed over it),
    so a crash or a kill at any moment leaves the answers before it, never a torn file."""

    def __init__(self, path: str | Path, image_ids: list[str], classes: list[str]):
        self.path = Path(path)
        self.row_of = {image_id: i for i, image_id in enumerate(image_ids)}
        self.class_of = {name: c for c, name in enumerate(classes)}
        self.table = pq.read_table(self.path).select(ANSWERS_SCHEMA.names).cast(ANSWERS_SCHEMA) \
            if self.path.exists() else empty_answers()

    def latest(self) -> dict[tuple[str, str], int]:
        """{(image_id, class): label}: each entry's latest answer, by `merge_answers`' rule (a later row wins a
        tie)."""
        merged, _ = merge_answers([self.table])
        return {(row["image_id"], row["class"]): row["label"] for row in merged.to_pylist()}

    def answers(self) -> tuple[np.ndarray, np.ndarray]:
        """(answered bool [N, C], label int8 [N, C], 0 where unanswered) over the book's images and classes."""
        mask = np.zeros((len(self.row_of), len(self.class_of)), bool)
        labels = np.zeros(mask.shape, np.int8)
        for (image_id, name), label in self.latest().items():
            if image_id in self.row_of and name in self.class_of:
                mask[self.row_of[image_id], self.class_of[name]] = True
                labels[self.row_of[image_id], self.class_of[name]] = label
        return mask, labels

    def add(self, image_id: str, name: str, label: int, now: datetime.datetime | None = None) -> int:
        """Record one answer and write the file; returns the number of answered entries."""
        if image_id not in self.row_of:
            raise DataError(f"image {image_id!r} is not a train image of the review")
        if name not in self.class_of:
            raise DataError(f"class {name!r} is not one of {list(self.class_of)}")
        if label not in (0, 1):
            raise DataError(f"label {label!r}: an answer is 0 or 1")
        now = now or datetime.datetime.now(datetime.UTC)
        row = pa.Table.from_pylist([{"image_id": image_id, "class": name, "label": label, "answered_at": now}],
                                   schema=ANSWERS_SCHEMA)
        table = pa.concat_tables([self.table, row])
        with atomic_path(self.path) as tmp:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        self.table = table
        return len(self.latest())


def confidences(logits: np.ndarray) -> np.ndarray:
    """P(positive) of each entry, the page's confidence."""
    return sigmoid(logits).astype(np.float32)
