"""Stage `prepare`: the dataset → data/prepared/manifest.parquet.

`dataset.format: embedded` generates the seeded scene benchmark (PNG files in data/prepared/images);
`folder` imports a directory of images with a CSV/Parquet label table, `voc` a VOC20xx directory, `coco`
a COCO 2014 directory (train2014 → train, val2014 → test), `nuswide` NUS-WIDE's lists and label files
(images stay where they are; data/prepared/images then only holds a note naming the root and each
image's size and mtime).

Imported images are checked first: every listed image is decoded fully, as every later stage will decode
it. What cannot be used (unreadable, truncated, zero-byte, decompression bomb, absent, duplicate id, unknown
class, path escaping the root…) is excluded and reported by id in reports/data_issues.parquet, which also
lists handled conversions (CMYK, grayscale, palette, 16-bit, alpha → RGB). The report is written on every
run, empty for the embedded generator. `dataset.on_bad_input: fail` turns any exclusion into an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline.datasets import (
    ImportedDataset,
    Issue,
    check_images,
    issue_summary,
    issues_table,
    no_positive_issues,
    read_coco,
    read_folder,
    read_nuswide,
    read_voc,
)
from pipeline.images import DEFAULT_MAX_PIXELS
from pipeline.progress import progress_bar
from pipeline.scenes import render_scene, scene_rng
from pipeline.storage import DataError, atomic_path, write_table
from stages.common import IMAGES_DIR, MANIFEST, REPORTS, Params, scene_config

DATASET_STREAM = 0  # the teacher trains on scenes of another stream: never on these
FORMATS = ("embedded", "folder", "voc", "coco", "nuswide")
DATA_ISSUES = REPORTS / "data_issues.parquet"
ON_BAD_INPUT = ("skip", "fail")


@dataclass(frozen=True)
class InputChecks:
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused as decompression bombs
    on_bad_input: str = "skip"  # skip: exclude and report | fail: any exclusion fails the stage
    num_workers: int = 0  # DataLoader workers decoding images for the check


def input_checks(p: Params) -> InputChecks:
    # Only lowering the limit is allowed: every later stage decodes with the default one.
    return InputChecks(max_pixels=p.get("max_pixels", int, lo=1, hi=DEFAULT_MAX_PIXELS, default=DEFAULT_MAX_PIXELS),
                       on_bad_input=p.get("on_bad_input", str, choices=ON_BAD_INPUT, default="skip"),
                       num_workers=p.get("num_workers", int, lo=0, default=0))


def write_issues(issues: Sequence[Issue], source: str) -> None:
    """reports/data_issues.parquet, atomically, on every run; then the one-line summary."""
    table = issues_table(issues).replace_schema_metadata({"source": source})
    with atomic_path(DATA_ISSUES) as tmp:
        pq.write_table(table, tmp)
    print(f"data issues: {issue_summary(issues)} → {DATA_ISSUES}")


READERS = {"folder": read_folder, "voc": read_voc, "coco": read_coco, "nuswide": read_nuswide}


# Every key some format reads, beyond format and the input checks: what validation accepts in `dataset`.
FORMAT_KEYS = ("seed", "n_train", "n_test", "image_size", "n_classes", "max_small",  # embedded
               "root", "labels", "classes", "test_fraction", "train_set", "test_set", "include_difficult",
               "images_dir")


def check(params: Params) -> tuple[str, dict, InputChecks]:
    """(format, the reader's keyword arguments, input checks); paths must exist."""
    p = params.section("dataset")
    fmt = p.get("format", str, choices=FORMATS)
    checks = input_checks(p)
    p.allow(*FORMAT_KEYS)  # one format's keys are not unknown under another (dvc.yaml declares some for all)
    if fmt == "embedded":
        return fmt, {"cfg": scene_config(p), "seed": p.get("seed", int), "n_train": p.get("n_train", int, lo=1),
                     "n_test": p.get("n_test", int, lo=1)}, checks
    root = p.path("root", "dir")
    if fmt == "folder":
        return fmt, {"root": root, "table": p.path("labels"), "seed": p.get("seed", int),
                     "classes": p.get("classes", (list, type(None)), default=None),
                     "test_fraction": p.get("test_fraction", float, lo=0.0, hi=1.0, default=0.2)}, checks
    if fmt == "voc":
        return fmt, {"root": root, "train_set": p.get("train_set", str, default="trainval"),
                     "test_set": p.get("test_set", str, default="test"),
                     "include_difficult": p.get("include_difficult", bool, default=True)}, checks
    if fmt == "coco":
        return fmt, {"root": root}, checks
    return fmt, {"root": root, "images_dir": p.get("images_dir", str, default="Flickr")}, checks


def run(params: Params) -> None:
    fmt, kwargs, checks = check(params)
    if fmt in READERS:
        return write_imported(READERS[fmt](**kwargs), fmt, checks)
    cfg, seed, n_train, n_test = kwargs["cfg"], kwargs["seed"], kwargs["n_train"], kwargs["n_test"]
    ids, paths, splits, labels, salient = [], [], [], [], []
    with atomic_path(IMAGES_DIR) as tmp:
        tmp.mkdir()
        for i in progress_bar(range(n_train + n_test), desc="prepare", unit="img"):
            scene = render_scene(scene_rng(seed, DATASET_STREAM, i), cfg)
            image_id = f"scene-{i:06d}"
            Image.fromarray(scene.image).save(tmp / f"{image_id}.png")
            ids.append(image_id)
            paths.append(f"{image_id}.png")
            splits.append("train" if i < n_train else "test")
            labels.append(scene.labels)
            salient.append(scene.salient)
    write_table(MANIFEST, {"image_id": ids, "path": paths, "split": splits,
                           "labels": np.stack(labels).astype(np.int8), "salient": np.array(salient, np.int32)},
                list(cfg.classes), extra_metadata={"root": str(IMAGES_DIR), "source": "embedded"})
    print(f"prepared {n_train} train + {n_test} test scenes, {len(cfg.classes)} classes → {MANIFEST}")
    write_issues([], "embedded")  # generated images need no checks; the report still exists every run


def write_imported(data: ImportedDataset, fmt: str, checks: InputChecks = InputChecks()) -> None:
    listed = len(data.paths) + sum(i.action == "excluded" and bool(i.image_id) for i in data.issues)
    data = check_images(data, checks.max_pixels, checks.num_workers)
    n_train = sum(s == "train" for s in data.splits)
    issues = data.issues + (no_positive_issues(data) if n_train else [])
    # The report is written before any failure below, so it says why; the manifest and images of an
    # earlier good run stay as they were.
    write_issues(issues, fmt)
    excluded = sum(i.action == "excluded" and bool(i.image_id) for i in issues)  # images, not annotations
    if not data.paths:
        raise DataError(f"dataset.root {data.root}: nothing to do: none of the {listed} listed image(s) is usable; "
                        f"{issue_summary(issues)}; see {DATA_ISSUES}")
    if not n_train:
        raise DataError(f"dataset.root {data.root}: nothing to do: no usable train image among {listed} listed; "
                        f"{issue_summary(issues)}; see {DATA_ISSUES}")
    if checks.on_bad_input == "fail" and any(i.action == "excluded" for i in issues):
        raise DataError(f"dataset.on_bad_input is 'fail' and input was excluded: {issue_summary(issues)}; "
                        f"see {DATA_ISSUES}")
    with atomic_path(IMAGES_DIR) as tmp:
        tmp.mkdir()
        # Size and mtime of every image: `score` depends on this file, so an image edited in place
        # reruns it after `dvc repro -f prepare`, without DVC hashing a dataset outside the project.
        stats = "".join(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n"
                        for rel in data.paths for st in [Path(data.root, rel).stat()])
        (tmp / "SOURCE.txt").write_text(f"images are read in place from {data.root}\n{stats}")
    write_table(MANIFEST, {"image_id": data.image_ids, "path": data.paths, "split": data.splits,
                           "labels": data.labels}, data.classes,
                extra_metadata={"root": str(data.root), "source": fmt})
    print(f"imported {n_train} train + {len(data.paths) - n_train} test images, {len(data.classes)} classes "
          f"from {data.root} ({fmt}), {excluded} excluded → {MANIFEST}")
