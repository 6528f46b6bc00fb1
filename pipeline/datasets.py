"""Dataset importers: each turns a dataset on disk into the manifest columns of DESIGN.md §4.

`folder`: a directory of images plus a CSV or Parquet table with columns `image` (path relative to the
root), `labels` (class names separated by `;`, empty for none) and optionally `split` (train/test).
`voc`, `coco`, `nuswide`: the datasets' own on-disk layouts (see each reader).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.storage import DataError


@dataclass
class ImportedDataset:
    image_ids: list[str]
    paths: list[str]  # relative to root
    splits: list[str]
    labels: np.ndarray  # int8 [N, C]
    classes: list[str]
    root: Path
    skipped: list[str] = field(default_factory=list)  # listed but absent images that were left out


def _inside(root: Path, rel: str) -> bool:
    """True if root/rel stays inside root (annotation files must not point elsewhere)."""
    try:
        (root / rel).resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def read_folder(root: str | Path, table: str | Path, classes: list[str] | None, test_fraction: float,
                seed: int) -> ImportedDataset:
    """Import a folder dataset. Rows without a `split` are assigned by a seeded draw with test_fraction."""
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
    seen: set[str] = set()
    for rel in images:
        if rel in seen:
            raise DataError(f"dataset.labels {table}: image {rel!r} listed twice")
        seen.add(rel)
        if not _inside(root, rel):
            raise DataError(f"dataset.labels {table}: image path {rel!r} escapes dataset.root")
    missing = [rel for rel in images if not (root / rel).is_file()]
    if missing:
        raise DataError(f"dataset.labels {table}: {len(missing)} listed image(s) absent under {root}, e.g. "
                        f"{missing[:3]}")
    all_names = sorted({n for row in names for n in row})
    if classes is None:
        classes = all_names
    unknown = sorted(set(all_names) - set(classes))
    if unknown:
        raise DataError(f"dataset.labels {table}: labels not in dataset.classes: {unknown}")
    if not classes:
        raise DataError(f"dataset.labels {table}: no class names found")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.zeros((len(images), len(classes)), dtype=np.int8)
    for r, row in enumerate(names):
        labels[r, [index[n] for n in row]] = 1
    if "split" in t.column_names:
        splits = [str(s) for s in t.column("split").to_pylist()]
        bad = sorted(set(splits) - {"train", "test"})
        if bad:
            raise DataError(f"dataset.labels {table}: split must be train or test, got {bad}")
    else:
        draw = np.random.default_rng(np.random.SeedSequence([seed, 5])).random(len(images))
        splits = ["test" if u < test_fraction else "train" for u in draw]
    return ImportedDataset(image_ids=images, paths=images, splits=splits, labels=labels, classes=list(classes),
                           root=root)


VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def _voc_ids(root: Path, image_set: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{image_set}.txt"
    if not path.is_file():
        raise DataError(f"dataset.root {root}: image set file {path} not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _voc_labels(xml_path: Path, include_difficult: bool, classes: tuple[str, ...]) -> np.ndarray:
    import defusedxml.ElementTree as SafeET  # forbids entity expansion (billion laughs) and external entities

    if not xml_path.is_file():
        raise DataError(f"{xml_path}: annotation file not found")
    try:
        tree = SafeET.parse(xml_path)
    except Exception as e:  # ParseError, EntitiesForbidden, DTDForbidden…
        raise DataError(f"{xml_path}: unsafe or malformed XML ({type(e).__name__}: {e})") from e
    labels = np.zeros(len(classes), dtype=np.int8)
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            raise DataError(f"{xml_path}: unknown class {name!r}")
        if include_difficult or (obj.findtext("difficult") or "0").strip() != "1":
            labels[classes.index(name)] = 1
    return labels


def read_voc(root: str | Path, train_set: str = "trainval", test_set: str = "test",
             include_difficult: bool = True) -> ImportedDataset:
    """Import a VOC20xx directory (JPEGImages/, Annotations/, ImageSets/Main/) with its standard image sets.

    Objects marked `difficult` count as present when include_difficult, else they are ignored.
    """
    root = Path(root)
    if not (root / "JPEGImages").is_dir():
        raise DataError(f"dataset.root {root}: not a VOC directory (no JPEGImages/; point it at VOCdevkit/VOC2007)")
    ids, splits = [], []
    for split, image_set in (("train", train_set), ("test", test_set)):
        for i in _voc_ids(root, image_set):
            ids.append(i)
            splits.append(split)
    if len(set(ids)) != len(ids):
        raise DataError(f"dataset.root {root}: an image is in both {train_set} and {test_set}")
    paths = [f"JPEGImages/{i}.jpg" for i in ids]
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise DataError(f"dataset.root {root}: {len(missing)} listed image(s) absent, e.g. {missing[:3]}")
    labels = np.stack([_voc_labels(root / "Annotations" / f"{i}.xml", include_difficult, VOC_CLASSES) for i in ids])
    return ImportedDataset(image_ids=ids, paths=paths, splits=splits, labels=labels, classes=list(VOC_CLASSES),
                           root=root)


def _coco_split(root: Path, annotations: str, images: str, split: str, classes: list[str] | None):
    import json

    path = root / annotations
    if not path.is_file():
        raise DataError(f"{path}: COCO annotation file not found")
    try:
        data = json.loads(path.read_text())
        cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        anns = [(int(a["image_id"]), int(a["category_id"])) for a in data["annotations"]]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a COCO instances file ({type(e).__name__}: {e})") from e
    names = classes if classes is not None else [cats[k] for k in sorted(cats)]
    index = {name: i for i, name in enumerate(names)}
    labels = {image_id: np.zeros(len(names), dtype=np.int8) for image_id in files}
    for image_id, cat in anns:
        if cat not in cats or cats[cat] not in index:
            raise DataError(f"{path}: annotation with unknown category id {cat}")
        if image_id not in labels:
            raise DataError(f"{path}: annotation for unknown image id {image_id}")
        labels[image_id][index[cats[cat]]] = 1
    order = sorted(files)
    rel = [f"{images}/{files[i]}" for i in order]
    for r in rel:
        if not _inside(root, r):
            raise DataError(f"{path}: image path {r!r} escapes dataset.root")
    missing = [r for r in rel if not (root / r).is_file()]
    if missing:
        raise DataError(f"{path}: {len(missing)} listed image(s) absent under {root}, e.g. {missing[:3]}")
    return [Path(files[i]).stem for i in order], rel, [split] * len(order), [labels[i] for i in order], names


def read_coco(root: str | Path, train_annotations: str = "annotations/instances_train2014.json",
              train_images: str = "train2014", test_annotations: str = "annotations/instances_val2014.json",
              test_images: str = "val2014") -> ImportedDataset:
    """Import COCO instances files: train2014 → train split, val2014 → test split, 80 categories by id."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset.root {root}: not a directory")
    ids, paths, splits, labels, classes = _coco_split(root, train_annotations, train_images, "train", None)
    t_ids, t_paths, t_splits, t_labels, _ = _coco_split(root, test_annotations, test_images, "test", classes)
    ids, paths, splits, labels = ids + t_ids, paths + t_paths, splits + t_splits, labels + t_labels
    if len(set(ids)) != len(ids):
        raise DataError(f"dataset.root {root}: duplicate image ids across the COCO splits")
    return ImportedDataset(image_ids=ids, paths=paths, splits=splits, labels=np.stack(labels), classes=classes,
                           root=root)


def read_nuswide(root: str | Path, images_dir: str = "Flickr") -> ImportedDataset:
    """Import NUS-WIDE: ImageList/{Train,Test}Imagelist.txt, Concepts81.txt and
    TrainTestLabels/Labels_<concept>_{Train,Test}.txt (one 0/1 per listed image).

    Listed images absent on disk are common (dead Flickr links): they are skipped and counted in
    `skipped`, never silently.
    """
    root = Path(root)
    concepts_file = root / "Concepts81.txt"
    if not concepts_file.is_file():
        raise DataError(f"dataset.root {root}: Concepts81.txt not found (not a NUS-WIDE directory)")
    classes = [c.strip() for c in concepts_file.read_text().splitlines() if c.strip()]
    ids, paths, splits, rows, skipped = [], [], [], [], []
    for split, name in (("train", "Train"), ("test", "Test")):
        listing = root / "ImageList" / f"{name}Imagelist.txt"
        if not listing.is_file():
            raise DataError(f"{listing}: image list not found")
        rels = [f"{images_dir}/{line.strip().replace(chr(92), '/')}" for line in listing.read_text().splitlines()
                if line.strip()]
        columns = []
        for c in classes:
            label_file = root / "TrainTestLabels" / f"Labels_{c}_{name}.txt"
            if not label_file.is_file():
                raise DataError(f"{label_file}: label file not found")
            values = [v.strip() for v in label_file.read_text().splitlines() if v.strip()]
            if len(values) != len(rels) or not set(values) <= {"0", "1"}:
                raise DataError(f"{label_file}: expected {len(rels)} lines of 0/1 (one per image of {listing.name})")
            columns.append(np.array(values, dtype=np.int8))
        labels = np.stack(columns, axis=1) if columns else np.zeros((len(rels), 0), np.int8)
        for rel, row in zip(rels, labels, strict=True):
            if not _inside(root, rel):
                raise DataError(f"{listing}: image path {rel!r} escapes dataset.root")
            if not (root / rel).is_file():
                skipped.append(rel)
                continue
            ids.append(rel.split("/", 1)[1])
            paths.append(rel)
            splits.append(split)
            rows.append(row)
    if not rows:
        raise DataError(f"dataset.root {root}: none of the listed images is present under {root / images_dir}")
    return ImportedDataset(image_ids=ids, paths=paths, splits=splits, labels=np.stack(rows), classes=classes,
                           root=root, skipped=skipped)
