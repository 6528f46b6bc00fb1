"""The `nuswide` format: NUS-WIDE's image lists, concept list and per-concept label files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.datasets.checks import ImportedDataset, Rows
from pipeline.datasets.registry import register_reader
from pipeline.settings import Settings, setting
from pipeline.storage import DataError


@dataclass(frozen=True)
class NusWideSettings(Settings):
    """The `dataset` keys of `format: nuswide`."""

    root: str = setting("")  # ImageList/, Concepts81.txt, TrainTestLabels/
    images_dir: str = setting("Flickr")  # relative to root

    SECTION: ClassVar[str] = "dataset"


@register_reader("nuswide", settings=NusWideSettings, paths={"root": "dir"})
def read_nuswide(root: str | Path, images_dir: str = "Flickr") -> ImportedDataset:
    """Import NUS-WIDE: ImageList/{Train,Test}Imagelist.txt, Concepts81.txt and
    TrainTestLabels/Labels_<concept>_{Train,Test}.txt (one 0/1 per listed image).

    Listed images absent on disk are common (dead Flickr links): they are excluded and reported (`absent`,
    also listed by `skipped`), never silently.
    """
    root = Path(root)
    concepts_file = root / "Concepts81.txt"
    if not concepts_file.is_file():
        raise DataError(f"dataset.root {root}: Concepts81.txt not found (not a NUS-WIDE directory)")
    classes = [c.strip() for c in concepts_file.read_text().splitlines() if c.strip()]
    rows = Rows(root)
    for split, name in (("train", "Train"), ("test", "Test")):
        listing = root / "ImageList" / f"{name}Imagelist.txt"
        if not listing.is_file():
            raise DataError(f"{listing}: image list not found")
        listed = [line.strip().replace(chr(92), "/") for line in listing.read_text().splitlines() if line.strip()]
        columns = []
        for c in classes:
            label_file = root / "TrainTestLabels" / f"Labels_{c}_{name}.txt"
            if not label_file.is_file():
                raise DataError(f"{label_file}: label file not found")
            values = [v.strip() for v in label_file.read_text().splitlines() if v.strip()]
            if len(values) != len(listed) or not set(values) <= {"0", "1"}:
                raise DataError(f"{label_file}: expected {len(listed)} lines of 0/1 (one per image of {listing.name})")
            columns.append(np.array(values, dtype=np.int8))
        labels = np.stack(columns, axis=1) if columns else np.zeros((len(listed), 0), np.int8)
        for image_id, row in zip(listed, labels, strict=True):
            rel = f"{images_dir}/{image_id}"
            if rows.claim(image_id, rel, f"ImageList/{listing.name}"):
                rows.add(image_id, rel, split, row, (), f"ImageList/{listing.name}")
    return rows.dataset(classes)
