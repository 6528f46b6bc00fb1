"""Checks every imported row and image passes, and the dataset they build.

Row checks (`Rows`, used by every importer), in order: the path stays inside the root; the image id is
new; every label names a known class; the file exists. A row failing one is excluded and reported as an
`Issue`, never fatal. After importing, `check_images` decodes every kept image as the later stages will,
and `check_import` adds the dataset-level notes and says whether anything usable is left (InputChecks:
the settings of these checks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.datasets.issues import Issue, issue_summary
from pipeline.images import DEFAULT_MAX_PIXELS, CheckedImages
from pipeline.progress import progress_bar
from pipeline.settings import Settings, setting


@dataclass
class ImportedDataset:
    image_ids: list[str]
    paths: list[str]  # relative to root
    splits: list[str]
    labels: np.ndarray  # int8 [N, C]
    classes: list[str]
    root: Path
    issues: list[Issue] = field(default_factory=list)  # what was excluded, converted or noted, in order found

    @property
    def skipped(self) -> list[str]:
        """Listed images absent on disk (left out and reported)."""
        return [i.path for i in self.issues if i.kind == "absent"]

    def subset(self, keep: Sequence[int], issues: Sequence[Issue] = ()) -> ImportedDataset:
        """The rows `keep` (in that order), with `issues` appended to the report."""
        keep = list(keep)
        return ImportedDataset(image_ids=[self.image_ids[i] for i in keep], paths=[self.paths[i] for i in keep],
                               splits=[self.splits[i] for i in keep], labels=self.labels[keep].reshape(
                                   len(keep), len(self.classes)), classes=self.classes, root=self.root,
                               issues=[*self.issues, *issues])


def inside(rel: str) -> bool:
    """True if `rel`, a path read from an annotation file, stays inside the dataset root.

    Checked on the text (absolute paths, `..` climbing out), not on resolved links: symlinks inside the
    root were placed by whoever owns the dataset (e.g. train2014 -> /mnt/ssd/train2014) and are trusted.
    """
    if "\x00" in rel or os.path.isabs(rel):
        return False
    norm = os.path.normpath(rel)
    return norm != ".." and not norm.startswith("../")


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # e.g. a name too long for the file system
        return False


class Rows:
    """Rows of a dataset as an importer reads them, each excluded with an Issue or kept.

    Checks per row, in order: the path stays inside the root; the image id is new (the first row listing
    an id claims it, whatever becomes of that row); every label names a known class; the file exists.
    """

    def __init__(self, root: Path):
        self.root = root
        self.ids: list[str] = []
        self.paths: list[str] = []
        self.splits: list[str] = []
        self.labels: list[np.ndarray] = []
        self.issues: list[Issue] = []
        self._claimed: set[str] = set()

    def exclude(self, image_id: str, rel: str, kind: str, detail: str) -> None:
        self.issues.append(Issue(image_id, rel, kind, detail, "excluded"))

    def claim(self, image_id: str, rel: str, source: str) -> bool:
        """Path and duplicate checks, before anything else about the row is read."""
        if not inside(rel):
            self.exclude(image_id, rel, "path_escapes_root", f"{source}: image path {rel!r} escapes dataset.root")
            return False
        if image_id in self._claimed:
            self.exclude(image_id, rel, "duplicate_id", f"{source}: image id {image_id!r} listed again (first kept)")
            return False
        self._claimed.add(image_id)
        return True

    def add(self, image_id: str, rel: str, split: str, labels: np.ndarray, unknown: Sequence[str] = (),
            source: str = "") -> None:
        """A claimed row: excluded if it names unknown classes or its file is absent, else kept."""
        if unknown:
            self.exclude(image_id, rel, "unknown_class", f"{source}: labels not in the classes: {sorted(unknown)}")
        elif not is_file(self.root / rel):
            self.exclude(image_id, rel, "absent", f"{source}: listed image not found under {self.root}")
        else:
            self.ids.append(image_id)
            self.paths.append(rel)
            self.splits.append(split)
            self.labels.append(labels)

    def dataset(self, classes: list[str]) -> ImportedDataset:
        labels = np.stack(self.labels).astype(np.int8) if self.labels else np.zeros((0, len(classes)), np.int8)
        return ImportedDataset(image_ids=self.ids, paths=self.paths, splits=self.splits, labels=labels,
                               classes=list(classes), root=self.root, issues=self.issues)


# ------------------------------------------------------------------------------ checks after importing

def check_images(data: ImportedDataset, max_pixels: int = DEFAULT_MAX_PIXELS, num_workers: int = 0) -> ImportedDataset:
    """Decode every image fully, as every later stage will (pipeline.images.decode_image).

    Images that cannot be decoded are excluded and reported by kind; conversions (`converted_mode`) and
    misnamed formats (`wrong_extension`) are reported and kept. DataLoader workers decode in parallel;
    results come back in order, so the report does not depend on num_workers.
    """
    from torch.utils.data import DataLoader


    checked = CheckedImages([data.root / rel for rel in data.paths], max_pixels)
    loader = DataLoader(checked, batch_size=None, num_workers=num_workers)
    keep, issues = [], []
    for result in progress_bar(loader, total=len(checked), desc="check images", unit="img"):
        i = result.index
        image_id, rel = data.image_ids[i], data.paths[i]
        if result.info is None:
            issues.append(Issue(image_id, rel, result.kind, result.detail, "excluded"))
            continue
        keep.append(i)
        info = result.info
        if info.conversion:
            issues.append(Issue(image_id, rel, "converted_mode", info.conversion, "converted"))
        if info.suffix_mismatch:
            issues.append(Issue(image_id, rel, "wrong_extension", f"{info.format} data in a "
                                f"{Path(rel).suffix or 'suffix-less'} file (decoded as {info.format})", "kept"))
    return data.subset(keep, issues)


def no_positive_issues(data: ImportedDataset) -> list[Issue]:
    """A dataset-level `no_positives` issue per class without a positive train image (kept: the class stays,
    the metrics skip it for AP)."""
    train = np.array([s == "train" for s in data.splits], dtype=bool)
    counts = data.labels[train].sum(axis=0) if data.labels.size else np.zeros(len(data.classes), int)
    return [Issue("", "", "no_positives", f"class {c!r} has no positive among {int(train.sum())} train images",
                  "kept") for c, n in zip(data.classes, counts, strict=True) if n == 0]


ON_BAD_INPUT = ("skip", "fail")


@dataclass(frozen=True)
class InputChecks(Settings):
    """The `dataset` keys of the check every imported image passes."""

    # larger images are refused as decompression bombs; only lowering the limit is allowed, as every
    # later stage decodes with the default one
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, ge=1, le=DEFAULT_MAX_PIXELS)
    on_bad_input: str = setting("skip", choices=ON_BAD_INPUT)  # skip: exclude and report | fail: any exclusion fails
    num_workers: int = setting(0, ge=0)  # DataLoader workers decoding images for the check

    SECTION: ClassVar[str] = "dataset"


@dataclass(frozen=True)
class CheckedImport:
    """An imported dataset after `check_import`: the usable rows and every issue to report."""

    data: ImportedDataset  # the rows kept
    issues: list[Issue]  # the report, dataset-level notes (`no_positives`) included
    listed: int  # images the dataset listed, before any exclusion

    @property
    def n_train(self) -> int:
        return sum(s == "train" for s in self.data.splits)

    @property
    def excluded(self) -> int:
        """Images excluded (not annotations)."""
        return sum(i.action == "excluded" and bool(i.image_id) for i in self.issues)

    def problem(self, on_bad_input: str = "skip") -> str | None:
        """Why the import cannot go on (nothing usable, or an exclusion under `on_bad_input: fail`), or None."""
        summary = issue_summary(self.issues)
        if not self.data.paths:
            return (f"dataset.root {self.data.root}: nothing to do: none of the {self.listed} listed image(s) is "
                    f"usable; {summary}")
        if not self.n_train:
            return f"dataset.root {self.data.root}: nothing to do: no usable train image among {self.listed} " \
                   f"listed; {summary}"
        if on_bad_input == "fail" and any(i.action == "excluded" for i in self.issues):
            return f"dataset.on_bad_input is 'fail' and input was excluded: {summary}"
        return None


def check_import(data: ImportedDataset, checks: InputChecks = InputChecks()) -> CheckedImport:
    """`check_images`, then a `no_positives` note per class without a positive train image (when there are
    train images at all)."""
    listed = len(data.paths) + sum(i.action == "excluded" and bool(i.image_id) for i in data.issues)
    data = check_images(data, checks.max_pixels, checks.num_workers)
    n_train = sum(s == "train" for s in data.splits)
    return CheckedImport(data, data.issues + (no_positive_issues(data) if n_train else []), listed)


def in_place_note(data: ImportedDataset) -> str:
    """The note that stands for the images of an import (read in place): the root, then each image's size and
    mtime, so that an image edited in place changes the note (and reruns what depends on it)."""
    stats = "".join(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n"
                    for rel in data.paths for st in [Path(data.root, rel).stat()])
    return f"images are read in place from {data.root}\n{stats}"
