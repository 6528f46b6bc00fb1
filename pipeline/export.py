"""Pseudo labels in the formats other trainers read.

- CSV `image,labels,split`: `image` is the image's path relative to the dataset root, `labels` the classes
  at or above the probability threshold joined by ';' — the `dataset.format: folder` input of this
  pipeline, so an export can be read back as a labelled dataset.
- COCO-style JSON: `info` (what was exported: the label table, threshold, the digest of the params of the run
  that wrote it, as dvc.lock records them), `images` (id,
  file_name, width, height), `categories` (id from 1, name, supercategory) and one annotation per (image,
  class) label with its `score` (probability); image-level, so no `bbox`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.logits import sigmoid

FORMATS = ("csv", "coco")
SUFFIX_FORMATS = {".csv": "csv", ".json": "coco"}
SUPERCATEGORY = "object"  # our classes have no hierarchy; COCO readers expect the field


def export_format(out: str, fmt: str | None) -> str:
    """The format of an export to `out`: `fmt`, or the one its suffix names; a suffix that names another
    format than `fmt` is an error (a .csv holding JSON would be read wrong)."""
    suffix = Path(out).suffix.lower()
    implied = SUFFIX_FORMATS.get(suffix)
    if fmt is None:
        if implied is None:
            raise ValueError(f"{out}: cannot tell the format from the suffix {suffix!r}; give --format "
                             f"({' or '.join(FORMATS)}) or name the file .csv or .json")
        return implied
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    if implied is not None and implied != fmt:
        raise ValueError(f"{out}: the suffix {suffix} is for --format {implied}, not {fmt}; rename the file or "
                         f"drop --format")
    return fmt


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


def unlabelled(logits: np.ndarray, threshold: float) -> int:
    """How many rows have no class at or above the probability threshold."""
    return int((~(sigmoid(np.asarray(logits, np.float64)) >= threshold).any(1)).sum())


def coco_dict(paths: Sequence[str], logits: np.ndarray, classes: Sequence[str], threshold: float,
              sizes: Sequence[tuple[int, int] | None], info: Mapping[str, object] | None = None) -> dict:
    """The COCO-style export (image-level annotations with a score). `sizes`: each image's (width, height),
    None where unknown (the fields are then absent); `info`: what was exported, merged into `info`."""
    probs = sigmoid(np.asarray(logits, np.float64))
    images = [{"id": i + 1, "file_name": p, **({"width": wh[0], "height": wh[1]} if wh else {})}
              for i, (p, wh) in enumerate(zip(paths, sizes, strict=True))]
    categories = [{"id": k + 1, "name": c, "supercategory": SUPERCATEGORY} for k, c in enumerate(classes)]
    rows, cols = np.nonzero(probs >= threshold)
    annotations = [{"id": n + 1, "image_id": int(r) + 1, "category_id": int(c) + 1,
                    "score": round(float(probs[r, c]), 6)} for n, (r, c) in enumerate(zip(rows, cols, strict=True))]
    return {"info": {"description": "mlpl pseudo labels", "threshold": threshold, **(info or {})}, "images": images,
            "categories": categories, "annotations": annotations}


def locked_params(lock: Mapping, out: str, out_md5: str) -> dict[str, object] | None:
    """The params of the run that wrote the output `out` (whose file now has md5 `out_md5`), as the parsed
    dvc.lock `lock` records them: every stage's params, `file:key` → value. None where the lock does not
    describe this file (written outside `dvc repro`, or changed since): params.yaml as it is now may not be
    what made it."""
    stages = lock.get("stages") or {}
    if out_md5 not in [o.get("md5") for s in stages.values() for o in s.get("outs") or [] if o.get("path") == out]:
        return None
    return {f"{file}:{key}": value for s in stages.values() for file, values in (s.get("params") or {}).items()
            for key, value in values.items()}

