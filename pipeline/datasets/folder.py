"""The `folder` format: a directory of images plus a CSV or Parquet label table.

The table has columns `image` (path relative to the root), `labels` (class names separated by `;`, empty
for none) and optionally `split` (train/test).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.datasets.checks import ImportedDataset, Rows
from pipeline.datasets.registry import register_reader
from pipeline.settings import Settings, setting
from pipeline.storage import DataError


@dataclass(frozen=True)
class FolderSettings(Settings):
    """The `dataset` keys of `format: folder`."""

    root: str = setting("")  # the image files; the table's paths are relative to it
    table: str = setting("")  # key `labels`: CSV or Parquet with columns image, labels ("cat;dog"), optional split
    classes: list | None = setting(None, auto=True)  # null or auto: every label seen in the table, sorted
    test_fraction: float = setting(0.2, ge=0.0, le=1.0)  # rows without a split go to test with this probability
    seed: int = setting(0)  # of that draw

    SECTION: ClassVar[str] = "dataset"
    PARAMS_KEYS: ClassVar[dict[str, str]] = {"table": "labels"}


@register_reader("folder", settings=FolderSettings, paths={"root": "dir", "labels": "file"})
def read_folder(root: str | Path, table: str | Path, classes: list[str] | None, test_fraction: float,
                seed: int) -> ImportedDataset:
    """Import a folder dataset. Rows without a `split` are assigned by a seeded draw with test_fraction.

    With `classes` given, a row naming another class is excluded and reported (`unknown_class`): a typo of a
    real class would otherwise become a false negative. Without, the classes are every name in the table.
    """
    root, table = Path(root), Path(table)
    if not root.is_dir():
        raise DataError(f"dataset.root {root}: not a directory")
    if not table.is_file():
        raise DataError(f"dataset.labels {table}: file not found")
    try:
        t = pq.read_table(table) if table.suffix == ".parquet" else pacsv.read_csv(
            table, convert_options=pacsv.ConvertOptions(strings_can_be_null=False, column_types={
                "image": "string", "labels": "string", "split": "string"}))
    except Exception as e:
        raise DataError(f"dataset.labels {table}: cannot read ({e})") from e
    for col in ("image", "labels"):
        if col not in t.column_names:
            raise DataError(f"dataset.labels {table}: missing column {col!r} (has {t.column_names})")
    images = [str(v) for v in t.column("image").to_pylist()]
    if not images:
        raise DataError(f"dataset.labels {table}: no rows")
    names = [[c.strip() for c in (v or "").split(";") if c.strip()] for v in t.column("labels").to_pylist()]
    if classes is None:
        classes = sorted({n for row in names for n in row})  # from the table, never from which files exist
    if not classes:
        raise DataError(f"dataset.labels {table}: no class names found")
    if "split" in t.column_names:
        splits = [str(s) for s in t.column("split").to_pylist()]
        bad = sorted(set(splits) - {"train", "test"})
        if bad:
            raise DataError(f"dataset.labels {table}: split must be train or test, got {bad}")
    else:
        # drawn over all rows, so an excluded row never moves another image to the other split
        draw = np.random.default_rng(np.random.SeedSequence([seed, 5])).random(len(images))
        splits = ["test" if u < test_fraction else "train" for u in draw]
    index = {c: i for i, c in enumerate(classes)}
    rows = Rows(root)
    for r, (rel, row) in enumerate(zip(images, names, strict=True)):
        source = f"{table.name} row {r + 2}"  # line in the CSV, counting the header
        if rows.claim(rel, rel, source):
            labels = np.zeros(len(classes), np.int8)
            labels[[index[n] for n in row if n in index]] = 1
            rows.add(rel, rel, splits[r], labels, [n for n in row if n not in index], source)
    return rows.dataset(list(classes))
