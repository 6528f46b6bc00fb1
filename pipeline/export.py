"""Pseudo labels in the formats other trainers read.

- CSV `image,labels,split`: `image` is the image's path relative to the dataset root, `labels` the classes
  at or above the probability threshold joined by ';' — the `dataset.format: folder` input of this
  pipeline, so an export can be read back as a labelled dataset.
- COCO-style JSON: `images` (id, file_name), `categories` (id from 1, name) and one annotation per
  (image, class) label with its `score` (probability); image-level, so no `bbox`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.logits import sigmoid

FORMATS = ("csv", "coco")


def label_names(probs: np.ndarray, classes: Sequence[str], threshold: float) -> list[list[str]]:
    """Per row, the classes with probability ≥ threshold, in class order."""
    return [[c for c, hit in zip(classes, row, strict=True) if hit] for row in np.asarray(probs) >= threshold]


def joined_labels(probs: np.ndarray, classes: Sequence[str], threshold: float) -> list[str]:
    """Per row, the classes with probability ≥ threshold joined by ';' (the `labels` format of a folder
    dataset's table, and of `mlpl predict`'s output)."""
    return [";".join(names) for names in label_names(probs, classes, threshold)]


def csv_rows(paths: Sequence[str], logits: np.ndarray, classes: Sequence[str], threshold: float,
             splits: Sequence[str]) -> list[dict[str, str]]:
    """Rows of the CSV export: image (path), labels ('a;b'), split."""
    labels = joined_labels(sigmoid(logits), classes, threshold)
    return [{"image": p, "labels": n, "split": s} for p, n, s in zip(paths, labels, splits, strict=True)]


def coco_dict(paths: Sequence[str], logits: np.ndarray, classes: Sequence[str], threshold: float) -> dict:
    """The COCO-style export (image-level annotations with a score)."""
    probs = sigmoid(np.asarray(logits, np.float64))
    images = [{"id": i + 1, "file_name": p} for i, p in enumerate(paths)]
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(classes)]
    rows, cols = np.nonzero(probs >= threshold)
    annotations = [{"id": n + 1, "image_id": int(r) + 1, "category_id": int(c) + 1,
                    "score": round(float(probs[r, c]), 6)} for n, (r, c) in enumerate(zip(rows, cols, strict=True))]
    return {"info": {"description": "mlpl pseudo labels", "threshold": threshold}, "images": images,
            "categories": categories, "annotations": annotations}
