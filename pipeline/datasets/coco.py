"""The `coco` format: COCO instances files (train2014 → train split, val2014 → test split)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.datasets.checks import ImportedDataset, Rows
from pipeline.datasets.issues import Issue
from pipeline.datasets.registry import register_reader
from pipeline.settings import Settings, setting
from pipeline.storage import DataError


def _coco_split(rows: Rows, annotations: str, images: str, split: str, classes: list[str] | None) -> list[str]:
    """Add one COCO instances file's images to `rows` (by numeric id); returns the class names."""
    import json

    root = rows.root
    path = root / annotations
    if not path.is_file():
        raise DataError(f"{path}: COCO annotation file not found")
    try:
        data = json.loads(path.read_text())
        cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        listed = [(int(im["id"]), str(im["file_name"])) for im in data["images"]]
        anns = [(int(a["image_id"]), int(a["category_id"])) for a in data["annotations"]]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a COCO instances file ({type(e).__name__}: {e})") from e
    names = classes if classes is not None else [cats[k] for k in sorted(cats)]
    index = {name: i for i, name in enumerate(names)}
    files: dict[int, str] = {}
    for image_id, name in listed:
        if image_id in files:  # the same numeric id twice in one file: the first entry counts
            rows.exclude(Path(name).stem, f"{images}/{name}", "duplicate_id",
                         f"{annotations}: image id {image_id} listed again (first kept)")
        else:
            files[image_id] = name
    labels = {image_id: np.zeros(len(names), dtype=np.int8) for image_id in files}
    unknown: dict[int, set[str]] = {}
    for image_id, cat in anns:
        if image_id not in labels:
            rows.issues.append(Issue("", annotations, "orphan_annotation",
                                     f"{annotations}: annotation for unknown image id {image_id}", "excluded"))
        elif cat not in cats or cats[cat] not in index:
            unknown.setdefault(image_id, set()).add(cats.get(cat, f"category id {cat}"))
        else:
            labels[image_id][index[cats[cat]]] = 1
    for i in sorted(files):
        image_id, rel = Path(files[i]).stem, f"{images}/{files[i]}"
        if rows.claim(image_id, rel, annotations):
            rows.add(image_id, rel, split, labels[i], sorted(unknown.get(i, ())), annotations)
    return names


@dataclass(frozen=True)
class CocoSettings(Settings):
    """The `dataset` keys of `format: coco`."""

    root: str = setting("")  # annotations/instances_{train,val}2014.json, train2014/, val2014/

    SECTION: ClassVar[str] = "dataset"


@register_reader("coco", settings=CocoSettings, paths={"root": "dir"})
def read_coco(root: str | Path, train_annotations: str = "annotations/instances_train2014.json",
              train_images: str = "train2014", test_annotations: str = "annotations/instances_val2014.json",
              test_images: str = "val2014") -> ImportedDataset:
    """Import COCO instances files: train2014 → train split, val2014 → test split, 80 categories by id.

    The classes are the train file's categories; an image annotated with a category outside them is excluded
    (`unknown_class`), an annotation of an image that is not listed is reported (`orphan_annotation`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset.root {root}: not a directory")
    rows = Rows(root)
    classes = _coco_split(rows, train_annotations, train_images, "train", None)
    _coco_split(rows, test_annotations, test_images, "test", classes)
    return rows.dataset(classes)
