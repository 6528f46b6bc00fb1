"""Stage `prepare`: the dataset → data/prepared/manifest.parquet.

`dataset.format` names a reader of pipeline.datasets: `embedded` generates the seeded scene benchmark (PNG
files in data/prepared/images); `folder` imports a directory of images with a CSV/Parquet label table, `voc`
a VOC20xx directory, `coco` a COCO 2014 directory (train2014 → train, val2014 → test), `nuswide` NUS-WIDE's
lists and label files (images stay where they are; data/prepared/images then only holds a note naming the
root and each image's size and mtime).

Imported images are checked first: every listed image is decoded fully, as every later stage will decode
it. What cannot be used (unreadable, truncated, zero-byte, decompression bomb, absent, duplicate id, unknown
class, path escaping the root…) is excluded and reported by id in reports/data_issues.parquet, which also
lists handled conversions (CMYK, grayscale, palette, 16-bit, alpha → RGB). The report is written on every
run, empty for the embedded generator. `dataset.on_bad_input: fail` turns any exclusion into an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow.parquet as pq

from pipeline.datasets import (
    READERS,
    DatasetFormat,
    ImportedDataset,
    InputChecks,
    Issue,
    check_import,
    in_place_note,
    issue_summary,
    issues_table,
    reader_for,
    settings_keys,
)
from pipeline.storage import DataError, atomic_path, write_table
from stages.common import IMAGES_DIR, MANIFEST, REPORTS, Params

DATA_ISSUES = REPORTS / "data_issues.parquet"

# Every key some format reads, beyond format and the input checks: what validation accepts in `dataset`
# (each reader's settings class says its own, pipeline.datasets).
FORMAT_KEYS = tuple(dict.fromkeys(key for reader in READERS.values() for key in settings_keys(reader.settings)))


def input_checks(p: Params) -> InputChecks:
    return p.build(InputChecks)


def check(params: Params) -> tuple[str, dict, InputChecks]:
    """(format, the reader's keyword arguments, input checks); paths must exist."""
    p = params.section("dataset")
    fmt = p.build(DatasetFormat).format
    checks = input_checks(p)
    p.allow(*FORMAT_KEYS)  # one format's keys are not unknown under another (dvc.yaml declares some for all)
    reader = reader_for(fmt)
    for key, kind in reader.paths:  # a typo'd path fails here, before any compute
        p.path(key, kind)
    return fmt, reader.arguments(p.build(reader.settings)), checks


def write_issues(issues: Sequence[Issue], source: str) -> None:
    """reports/data_issues.parquet, atomically, on every run; then the one-line summary."""
    table = issues_table(issues).replace_schema_metadata({"source": source})
    with atomic_path(DATA_ISSUES) as tmp:
        pq.write_table(table, tmp)
    print(f"data issues: {issue_summary(issues)} → {DATA_ISSUES}")


def run(params: Params) -> None:
    fmt, kwargs, checks = check(params)
    reader = reader_for(fmt)
    if not reader.renders:
        return write_imported(reader.read(**kwargs), fmt, checks)
    with atomic_path(IMAGES_DIR) as tmp:
        tmp.mkdir()
        scenes = reader.read(out=tmp, **kwargs)
    write_table(MANIFEST, scenes.columns(), scenes.classes, extra_metadata={"root": str(IMAGES_DIR), "source": fmt})
    n_train = sum(s == "train" for s in scenes.splits)
    print(f"prepared {n_train} train + {len(scenes.splits) - n_train} test scenes, {len(scenes.classes)} classes "
          f"→ {MANIFEST}")
    write_issues([], fmt)  # generated images need no checks; the report still exists every run


def write_imported(data: ImportedDataset, fmt: str, checks: InputChecks | None = None) -> None:
    checks = checks or InputChecks()
    checked = check_import(data, checks)
    # The report is written before any failure below, so it says why; the manifest and images of an
    # earlier good run stay as they were.
    write_issues(checked.issues, fmt)
    if problem := checked.problem(checks.on_bad_input):
        raise DataError(f"{problem}; see {DATA_ISSUES}")
    data = checked.data
    with atomic_path(IMAGES_DIR) as tmp:
        tmp.mkdir()
        # `score` depends on this note, so an image edited in place reruns it after `dvc repro -f prepare`,
        # without DVC hashing a dataset outside the project.
        (tmp / "SOURCE.txt").write_text(in_place_note(data))
    write_table(MANIFEST, {"image_id": data.image_ids, "path": data.paths, "split": data.splits,
                           "labels": data.labels}, data.classes,
                extra_metadata={"root": str(data.root), "source": fmt})
    print(f"imported {checked.n_train} train + {len(data.paths) - checked.n_train} test images, "
          f"{len(data.classes)} classes from {data.root} ({fmt}), {checked.excluded} excluded → {MANIFEST}")
