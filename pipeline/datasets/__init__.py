"""Datasets: each `dataset.format` is one reader, turning a dataset into the manifest columns of
docs/design.md#data-formats.

- `pipeline.datasets.registry`: the readers by format (`register_reader`, `reader_for`);
- `embedded`: the seeded scene benchmark, rendered (pipeline.scenes);
- `folder`: a directory of images plus a CSV or Parquet table (`image`, `labels`, optional `split`);
- `voc`, `coco`, `nuswide`: the datasets' own on-disk layouts (see each reader);
- `pipeline.datasets.checks`: the row checks every importer applies, the image check after importing;
- `pipeline.datasets.issues`: the issue report (reports/data_issues.parquet).

Bad rows never stop an import: a path escaping the root, a repeated image id, a label of an unknown class,
an unusable annotation or an absent file excludes that row and becomes an `Issue` (a row of
reports/data_issues.parquet). `check_images` then decodes every kept image as the later stages will.
Only problems with the dataset as a whole (no such directory, an unreadable labels table, a bad split value,
a label file of the wrong length) raise DataError, naming the file and the key.
"""

# The readers register in import order, which is the order of FORMATS (and of the error naming them).
# isort: off
from pipeline.datasets import embedded, folder, voc, coco, nuswide  # noqa: F401
# isort: on
from dataclasses import dataclass
from typing import ClassVar

from pipeline.datasets.checks import (
    ON_BAD_INPUT,
    CheckedImport,
    ImportedDataset,
    InputChecks,
    check_images,
    check_import,
    in_place_note,
    no_positive_issues,
)
from pipeline.datasets.coco import read_coco
from pipeline.datasets.embedded import DATASET_STREAM, RenderedScenes, render_scenes
from pipeline.datasets.folder import read_folder
from pipeline.datasets.issues import (
    ACTIONS,
    ISSUE_KINDS,
    ISSUE_SCHEMA,
    ROW_FAULTS,
    Issue,
    issue_summary,
    issues_table,
)
from pipeline.datasets.nuswide import read_nuswide
from pipeline.datasets.registry import READERS, Reader, reader_for, register_reader, settings_keys
from pipeline.datasets.voc import VOC_CLASSES, read_voc
from pipeline.settings import Settings, setting

FORMATS = tuple(READERS)  # in registration order: the order of the imports above


@dataclass(frozen=True)
class DatasetFormat(Settings):
    """`dataset.format`: which registered reader makes the dataset (its own keys: the reader's settings)."""

    format: str = setting("embedded", choices=FORMATS)

    SECTION: ClassVar[str] = "dataset"

__all__ = [
    "ACTIONS",
    "DATASET_STREAM",
    "FORMATS",
    "ISSUE_KINDS",
    "ISSUE_SCHEMA",
    "ON_BAD_INPUT",
    "READERS",
    "ROW_FAULTS",
    "VOC_CLASSES",
    "CheckedImport",
    "DatasetFormat",
    "ImportedDataset",
    "InputChecks",
    "Issue",
    "Reader",
    "RenderedScenes",
    "check_images",
    "check_import",
    "in_place_note",
    "issue_summary",
    "issues_table",
    "no_positive_issues",
    "read_coco",
    "read_folder",
    "read_nuswide",
    "read_voc",
    "reader_for",
    "register_reader",
    "settings_keys",
    "render_scenes",
]
