"""`mlpl predict PATH`: run the standalone student on every image of a folder (or on one image file) → a
Parquet table.

Rows: one per image that decodes, in path order, named by its path under the folder without the suffix; files
whose names differ only in the suffix (`a.png`, `a.jpg`) keep their suffixes in the id, never one id twice.
Files that cannot be decoded (empty, truncated, not an image, a decompression bomb) are left out, named on the
console and listed in a `data_issues`-style table next to the output (`preds.issues.parquet` for
`preds.parquet`), which also lists the kept images smaller than the student's input (`small_image`: upscaled,
so less reliable) and the suffixed ids (`duplicate_id`); non-image files are counted on the console.
`on_bad_input="fail"` decodes every image before any inference and exits, naming every bad file and writing
nothing. Columns are documented in docs/outputs.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.datasets import ON_BAD_INPUT, Issue, issue_summary, issues_table
from pipeline.export import joined_labels
from pipeline.images import IMAGE_SUFFIXES, ResizedOrFaulty, image_size_of, list_files
from pipeline.logits import sigmoid
from pipeline.models import load_student
from pipeline.progress import progress_bar
from pipeline.storage import DataError, atomic_path, write_table
from pipeline.student import Unreadable, predict_files

SHOWN = 10  # bad files named on the console; the issues table lists them all


def issues_path(out: Path) -> Path:
    """Where the issues of a prediction table go: preds.parquet → preds.issues.parquet."""
    return out.with_name(f"{out.stem}.issues.parquet")


def image_id(rel: Path) -> str:
    """A predicted file's id: its path under the folder without the suffix, as the label tables name images."""
    return rel.with_suffix("").as_posix()


def image_ids(rel: list[Path]) -> tuple[list[str], list[Issue]]:
    """The ids of files `rel` (paths under the folder): without the suffix, except where that id would name two
    files (`a.png`, `a.jpg`; or `a.png.jpg`, whose bare id is the other's path): those keep their suffix (a
    path, unique), and each is reported as a `duplicate_id` issue, kept."""
    bare = [image_id(r) for r in rel]
    counts: dict[str, int] = {}
    for i in bare:
        counts[i] = counts.get(i, 0) + 1
    paths = {r.as_posix() for r in rel}
    clash = [counts[b] > 1 or b in paths for b in bare]
    ids = [r.as_posix() if c else b for r, b, c in zip(rel, bare, clash, strict=True)]
    issues = [Issue(i, r.as_posix(), "duplicate_id",
                    f"'{b}' names {counts[b]} files: the id keeps the suffix" if counts[b] > 1 else
                    f"'{b}' is also another file's name: the id keeps the suffix", "kept")
              for i, r, b, c in zip(ids, rel, bare, clash, strict=True) if c]
    return ids, issues


def small_images(paths: list[Path], rel: list[Path], ids: list[str], size: int) -> list[Issue]:
    """A `small_image` issue (kept) for every image whose shorter side is below the student's input side."""
    out = []
    for path, r, i in zip(paths, rel, ids, strict=True):
        wh = image_size_of(path)
        if wh is not None and min(wh) < size:
            out.append(Issue(i, r.as_posix(), "small_image", f"{wh[0]}×{wh[1]} px, upscaled to the student's "
                             f"{size}×{size} input: its labels are less reliable", "kept"))
    return out


def listed(path: Path) -> tuple[Path, list[Path], int]:
    """(the folder ids are relative to, the image files, how many other files were skipped) of a folder or of
    one image file."""
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise FileNotFoundError(f"{path}: not an image file (one of {', '.join(IMAGE_SUFFIXES)}) nor a folder")
        return path.parent, [path], 0
    images, others = list_files(path)
    return path, images, len(others)


def run(images_dir: Path, out: Path, model_path: Path, batch_size: int, num_workers: int,
        threshold: float = 0.5, on_bad_input: str = "skip") -> None:
    if on_bad_input not in ON_BAD_INPUT:
        raise ValueError(f"--on-bad-input must be one of {list(ON_BAD_INPUT)}, got {on_bad_input!r}")
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: student checkpoint not found (run `dvc repro` first)")
    root, paths, skipped = listed(images_dir)
    if skipped:
        print(f"skipped {skipped} non-image file(s) under {images_dir} (not one of {', '.join(IMAGE_SUFFIXES)})")
    if not paths:
        raise FileNotFoundError(f"{images_dir}: no image files found")
    rel = [p.relative_to(root) for p in paths]
    ids, duplicates = image_ids(rel)
    module, classes, size = load_student(model_path)
    if on_bad_input == "fail":  # every file decoded before any inference: a bad one costs no compute
        unreadable = undecodable(paths, size)
        fail_on_unreadable(unreadable, rel, ids, len(paths))
    with progress_bar(total=len(paths), desc="predict", unit="img") as bar:
        logits, decoded, unreadable = predict_files(module, size, paths, batch_size, num_workers,
                                                    on_batch=bar.update)
    fail_on_unreadable(unreadable, rel, ids, len(paths), on_bad_input)
    if not len(decoded):
        raise DataError(f"{images_dir}: none of the {len(paths)} image files can be decoded; nothing written")
    issues = ([Issue(ids[u.index], rel[u.index].as_posix(), u.kind, u.detail, "excluded") for u in unreadable]
              + duplicates + small_images([paths[i] for i in decoded], [rel[i] for i in decoded],
                                          [ids[i] for i in decoded], size))
    kept = [rel[i] for i in decoded]
    probs = sigmoid(logits)
    write_table(out, {"image_id": [ids[i] for i in decoded], "path": [r.as_posix() for r in kept],
                      "logits": logits.astype(np.float32), "probs": probs.astype(np.float32),
                      "labels": joined_labels(probs, classes, threshold)}, classes,
                extra_metadata={"model": str(model_path), "threshold": str(threshold)},
                units={"probs": "probability", "labels": f"class names with probs >= {threshold}, ';'-joined"})
    with atomic_path(issues_path(out)) as tmp:
        pq.write_table(issues_table(issues).replace_schema_metadata({"source": str(images_dir)}), tmp)
    print(f"predicted {len(decoded)} images → {out}; issues: {issue_summary(issues)} → {issues_path(out)}")


def undecodable(paths: list[Path], size: int) -> list[Unreadable]:
    """The files that do not decode, found by decoding each (no inference)."""
    faulty = ResizedOrFaulty(paths, size)
    return [Unreadable(i, kind, detail) for i, _, kind, detail in (faulty[j] for j in range(len(paths))) if kind]


def fail_on_unreadable(unreadable: list[Unreadable], rel: list[Path], ids: list[str], total: int,
                       on_bad_input: str = "fail") -> None:
    """Name the files that cannot be decoded on the console; raise with every one of them under `fail`."""
    for u in unreadable[:SHOWN]:
        tqdm.write(f"cannot decode {rel[u.index].as_posix()} ({u.kind}): {u.detail}")
    if len(unreadable) > SHOWN:
        tqdm.write(f"… and {len(unreadable) - SHOWN} more unreadable files")
    if unreadable and on_bad_input == "fail":
        raise DataError(f"{len(unreadable)} of {total} files cannot be decoded (--on-bad-input fail): "
                        + ", ".join(rel[u.index].as_posix() for u in unreadable) + "; nothing written")
