"""The `voc` format: a VOC20xx directory (JPEGImages/, Annotations/, ImageSets/Main/), read safely."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.datasets.checks import ImportedDataset, Rows, inside
from pipeline.datasets.registry import register_reader
from pipeline.settings import Settings, setting
from pipeline.storage import DataError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def _voc_ids(root: Path, image_set: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{image_set}.txt"
    if not path.is_file():
        raise DataError(f"dataset.root {root}: image set file {path} not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _voc_labels(xml_path: Path, include_difficult: bool, classes: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """(labels, names of unknown classes) of one annotation file; DataError if it is missing or unsafe."""
    import defusedxml.ElementTree as SafeET  # forbids entity expansion (billion laughs) and external entities

    if not xml_path.is_file():
        raise DataError(f"{xml_path}: annotation file not found")
    try:
        tree = SafeET.parse(xml_path)
    except Exception as e:  # ParseError, EntitiesForbidden, DTDForbidden…
        raise DataError(f"{xml_path}: unsafe or malformed XML ({type(e).__name__}: {e})") from e
    labels = np.zeros(len(classes), dtype=np.int8)
    unknown = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            unknown.append(name)
        elif include_difficult or (obj.findtext("difficult") or "0").strip() != "1":
            labels[classes.index(name)] = 1
    return labels, unknown


@dataclass(frozen=True)
class VocSettings(Settings):
    """The `dataset` keys of `format: voc`."""

    root: str = setting("")  # VOCdevkit/VOC20xx: JPEGImages/, Annotations/, ImageSets/Main/
    train_set: str = setting("trainval")  # the image set of the train split
    test_set: str = setting("test")
    include_difficult: bool = setting(True)  # objects marked difficult count as present

    SECTION: ClassVar[str] = "dataset"


@register_reader("voc", settings=VocSettings, paths={"root": "dir"})
def read_voc(root: str | Path, train_set: str = "trainval", test_set: str = "test",
             include_difficult: bool = True) -> ImportedDataset:
    """Import a VOC20xx directory (JPEGImages/, Annotations/, ImageSets/Main/) with its standard image sets.

    Objects marked `difficult` count as present when include_difficult, else they are ignored. An image whose
    annotation file is missing, malformed or unsafe is excluded and reported (`bad_annotation`); one in both
    image sets is kept in the train set (`duplicate_id` for the test row).
    """
    root = Path(root)
    if not (root / "JPEGImages").is_dir():
        raise DataError(f"dataset.root {root}: not a VOC directory (no JPEGImages/; point it at VOCdevkit/VOC2007)")
    rows = Rows(root)
    for split, image_set in (("train", train_set), ("test", test_set)):
        source = f"ImageSets/Main/{image_set}.txt"
        for i in _voc_ids(root, image_set):
            rel, xml_rel = f"JPEGImages/{i}.jpg", f"Annotations/{i}.xml"
            if not inside(xml_rel):  # the id names both files: never read outside the root
                rows.exclude(i, rel, "path_escapes_root", f"{source}: image id {i!r} escapes dataset.root")
                continue
            if not rows.claim(i, rel, source):
                continue
            try:
                labels, unknown = _voc_labels(root / xml_rel, include_difficult, VOC_CLASSES)
            except DataError as e:
                rows.exclude(i, rel, "bad_annotation", str(e))
                continue
            rows.add(i, rel, split, labels, unknown, xml_rel)
    return rows.dataset(list(VOC_CLASSES))
