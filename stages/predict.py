"""`mlpl predict DIR`: run the standalone student on every image of a folder → a Parquet table.

Rows: one per image that decodes, in path order. Files that cannot be decoded (empty, truncated, not an
image, a decompression bomb) are left out, named on the console and listed in a `data_issues`-style
table next to the output (`preds.issues.parquet` for `preds.parquet`); `on_bad_input="fail"` exits
instead, naming every bad file and writing nothing. Columns are documented in docs/outputs.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.datasets import ON_BAD_INPUT, Issue, issue_summary, issues_table
from pipeline.export import joined_labels
from pipeline.images import list_images
from pipeline.logits import sigmoid
from pipeline.models import load_student
from pipeline.progress import progress_bar
from pipeline.storage import DataError, atomic_path, write_table
from pipeline.student import predict_files

SHOWN = 10  # bad files named on the console; the issues table lists them all


def issues_path(out: Path) -> Path:
    """Where the issues of a prediction table go: preds.parquet → preds.issues.parquet."""
    return out.with_name(f"{out.stem}.issues.parquet")


def image_id(rel: Path) -> str:
    """A predicted file's id: its path under the folder without the suffix, as the label tables name images."""
    return rel.with_suffix("").as_posix()


def run(images_dir: Path, out: Path, model_path: Path, batch_size: int, num_workers: int,
        threshold: float = 0.5, on_bad_input: str = "skip") -> None:
    if on_bad_input not in ON_BAD_INPUT:
        raise ValueError(f"--on-bad-input must be one of {list(ON_BAD_INPUT)}, got {on_bad_input!r}")
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: student checkpoint not found (run `dvc repro` first)")
    paths = list_images(images_dir)
    if not paths:
        raise FileNotFoundError(f"{images_dir}: no image files found")
    module, classes, size = load_student(model_path)
    with progress_bar(total=len(paths), desc="predict", unit="img") as bar:
        logits, decoded, unreadable = predict_files(module, size, paths, batch_size, num_workers,
                                                    on_batch=bar.update)
    rel = [p.relative_to(images_dir) for p in paths]
    issues = [Issue(image_id(rel[u.index]), rel[u.index].as_posix(), u.kind, u.detail, "excluded")
              for u in unreadable]
    for issue in issues[:SHOWN]:
        tqdm.write(f"cannot decode {issue.path} ({issue.kind}): {issue.detail}")
    if len(issues) > SHOWN:
        tqdm.write(f"… and {len(issues) - SHOWN} more unreadable files")
    if issues and on_bad_input == "fail":
        raise DataError(f"{len(issues)} of {len(paths)} files cannot be decoded (--on-bad-input fail): "
                        + ", ".join(i.path for i in issues) + "; nothing written")
    if not len(decoded):
        raise DataError(f"{images_dir}: none of the {len(paths)} image files can be decoded; nothing written")
    kept = [rel[i] for i in decoded]
    probs = sigmoid(logits)
    write_table(out, {"image_id": [image_id(r) for r in kept], "path": [r.as_posix() for r in kept],
                      "logits": logits.astype(np.float32), "probs": probs.astype(np.float32),
                      "labels": joined_labels(probs, classes, threshold)}, classes,
                extra_metadata={"model": str(model_path), "threshold": str(threshold)},
                units={"probs": "probability", "labels": f"class names with probs >= {threshold}, ';'-joined"})
    with atomic_path(issues_path(out)) as tmp:
        pq.write_table(issues_table(issues).replace_schema_metadata({"source": str(images_dir)}), tmp)
    print(f"predicted {len(decoded)} images → {out}; unreadable files: {issue_summary(issues)} → "
          f"{issues_path(out)}")
