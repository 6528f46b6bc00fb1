"""Dataset importers: each turns a dataset on disk into the manifest columns of docs/design.md#data-formats.

`folder`: a directory of images plus a CSV or Parquet table with columns `image` (path relative to the
root), `labels` (class names separated by `;`, empty for none) and optionally `split` (train/test).
`voc`, `coco`, `nuswide`: the datasets' own on-disk layouts (see each reader).

Bad rows never stop an import: a path escaping the root, a repeated image id, a label of an unknown class,
an unusable annotation or an absent file excludes that row and becomes an `Issue` (a row of
reports/data_issues.parquet). `check_images` then decodes every kept image as the later stages will.
Only problems with the dataset as a whole (no such directory, an unreadable labels table, a bad split value,
a label file of the wrong length) raise DataError, naming the file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.images import DEFAULT_MAX_PIXELS, IMAGE_FAULTS, CheckedImages
from pipeline.progress import progress_bar
from pipeline.storage import DataError

# Stable names of reports/data_issues.parquet `kind` (README-documented; add, never rename).
ROW_FAULTS = ("path_escapes_root", "duplicate_id", "unknown_class", "bad_annotation", "absent")
ISSUE_KINDS = ROW_FAULTS + IMAGE_FAULTS + ("orphan_annotation", "converted_mode", "wrong_extension", "no_positives")
ACTIONS = ("excluded", "converted", "kept")
ISSUE_SCHEMA = pa.schema([("image_id", pa.string()), ("path", pa.string()), ("kind", pa.string()),
                          ("detail", pa.string()), ("action", pa.string())])


@dataclass(frozen=True)
class Issue:
    """One row of reports/data_issues.parquet. image_id and path are empty for dataset-level issues."""

    image_id: str
    path: str
    kind: str  # one of ISSUE_KINDS
    detail: str
    action: str  # excluded | converted | kept


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


def _inside(rel: str) -> bool:
    """True if `rel`, a path read from an annotation file, stays inside the dataset root.

    Checked on the text (absolute paths, `..` climbing out), not on resolved links: symlinks inside the
    root were placed by whoever owns the dataset (e.g. train2014 -> /mnt/ssd/train2014) and are trusted.
    """
    if "\x00" in rel or os.path.isabs(rel):
        return False
    norm = os.path.normpath(rel)
    return norm != ".." and not norm.startswith("../")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # e.g. a name too long for the file system
        return False


class _Rows:
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
        if not _inside(rel):
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
        elif not _is_file(self.root / rel):
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
    rows = _Rows(root)
    for r, (rel, row) in enumerate(zip(images, names, strict=True)):
        source = f"{table.name} row {r + 2}"  # line in the CSV, counting the header
        if rows.claim(rel, rel, source):
            labels = np.zeros(len(classes), np.int8)
            labels[[index[n] for n in row if n in index]] = 1
            rows.add(rel, rel, splits[r], labels, [n for n in row if n not in index], source)
    return rows.dataset(list(classes))


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
    rows = _Rows(root)
    for split, image_set in (("train", train_set), ("test", test_set)):
        source = f"ImageSets/Main/{image_set}.txt"
        for i in _voc_ids(root, image_set):
            rel, xml_rel = f"JPEGImages/{i}.jpg", f"Annotations/{i}.xml"
            if not _inside(xml_rel):  # the id names both files: never read outside the root
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


def _coco_split(rows: _Rows, annotations: str, images: str, split: str, classes: list[str] | None) -> list[str]:
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
    rows = _Rows(root)
    classes = _coco_split(rows, train_annotations, train_images, "train", None)
    _coco_split(rows, test_annotations, test_images, "test", classes)
    return rows.dataset(classes)


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
    rows = _Rows(root)
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


def issues_table(issues: Sequence[Issue]) -> pa.Table:
    """The issues as reports/data_issues.parquet's table (the schema even when there are none)."""
    return pa.Table.from_pylist([vars(i) for i in issues], schema=ISSUE_SCHEMA)


def issue_summary(issues: Sequence[Issue]) -> str:
    """Counts per action, then per kind, e.g. `2 excluded, 1 converted (absent 1, …)`; `none` without issues."""
    if not issues:
        return "none"
    by_action = {a: sum(i.action == a for i in issues) for a in ACTIONS}
    by_kind = {k: n for k in ISSUE_KINDS if (n := sum(i.kind == k for i in issues))}  # stable order
    return (", ".join(f"{n} {a}" for a, n in by_action.items() if n) + " ("
            + ", ".join(f"{k} {n}" for k, n in by_kind.items()) + ")")
