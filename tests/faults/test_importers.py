"""Importers and the image check: bad rows and bad files are excluded and reported by id, never fatal."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.datasets import (
    ISSUE_KINDS,
    ISSUE_SCHEMA,
    check_images,
    issue_summary,
    issues_table,
    no_positive_issues,
    read_coco,
    read_folder,
    read_nuswide,
    read_voc,
)
from tests.faults.builders import CLASSES, FAULTS, MAX_PIXELS, folder_dataset


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root, table = folder_dataset(tmp_path_factory.mktemp("faults"))
    return read_folder(root, table, CLASSES, 0.0, 0)


def test_every_fault_is_reported_once_with_its_kind(imported):
    checked = check_images(imported, MAX_PIXELS)
    expected = [(f.file, f.kind, f.action) for f in FAULTS if f.kind]
    assert sorted((i.path, i.kind, i.action) for i in checked.issues) == sorted(expected)
    assert {i.kind for i in checked.issues} <= set(ISSUE_KINDS)
    kept = [f.file for f in FAULTS if f.action in (None, "converted", "kept")]
    assert checked.paths == kept and checked.image_ids == kept  # in table order, the duplicate's first row
    assert checked.labels.shape == (len(kept), len(CLASSES))
    assert checked.labels[kept.index("ok/a.jpg")].tolist() == [1, 0, 0, 0]  # the first row of the duplicate id


def test_parallel_check_gives_the_same_report(imported):
    one, two = check_images(imported, MAX_PIXELS, num_workers=0), check_images(imported, MAX_PIXELS, num_workers=2)
    assert one.issues == two.issues and one.paths == two.paths


def test_no_positive_classes_are_reported_and_kept(imported):
    checked = check_images(imported, MAX_PIXELS)
    [issue] = no_positive_issues(checked)
    assert (issue.image_id, issue.kind, issue.action) == ("", "no_positives", "kept")
    assert "'cross'" in issue.detail  # only on a test image
    assert "cross" in checked.classes


def test_issue_table_schema_even_when_empty(tmp_path, imported):
    pq.write_table(issues_table([]), tmp_path / "empty.parquet")
    empty = pq.read_table(tmp_path / "empty.parquet")
    assert empty.num_rows == 0 and empty.schema.equals(ISSUE_SCHEMA)
    rows = issues_table(check_images(imported, MAX_PIXELS).issues).to_pylist()
    assert rows[0].keys() == {"image_id", "path", "kind", "detail", "action"}
    assert issue_summary([]) == "none"
    summary = "4 excluded (path_escapes_root 1, duplicate_id 1, unknown_class 1, absent 1)"  # ISSUE_KINDS order
    assert issue_summary(imported.issues) == summary


# ------------------------------------------------------------------ paths never leave the root, any importer

def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def _folder(tmp_path, escape):
    _image(tmp_path / "root" / "a.jpg")
    (tmp_path / "labels.csv").write_text(f"image,labels\na.jpg,x\n{escape},x\n")
    return read_folder(tmp_path / "root", tmp_path / "labels.csv", None, 0.0, 0)


def _voc(tmp_path, escape):
    root = tmp_path / "root"
    for i in ("a", escape):
        _image(root / "JPEGImages" / f"{i}.jpg")
        (root / "Annotations" / f"{i}.xml").parent.mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{i}.xml").write_text("<annotation><object><name>dog</name></object></annotation>")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text(f"a\n{escape}\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("")
    return read_voc(root)


def _coco(tmp_path, escape):
    root = tmp_path / "root"
    _image(root / "train2014" / "a.jpg")
    (root / "annotations").mkdir(parents=True)
    for split, images in (("train2014", [(1, "a.jpg"), (2, escape)]), ("val2014", [])):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps({
            "images": [{"id": i, "file_name": n} for i, n in images], "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"image_id": 1, "category_id": 1}] if images else []}))
    return read_coco(root)


def _nuswide(tmp_path, escape):
    root = tmp_path / "root"
    _image(root / "Flickr" / "a.jpg")
    (root / "Concepts81.txt").write_text("x\n")
    (root / "ImageList").mkdir()
    (root / "TrainTestLabels").mkdir()
    (root / "ImageList" / "TrainImagelist.txt").write_text(f"a.jpg\n{escape}\n")
    (root / "ImageList" / "TestImagelist.txt").write_text("")
    (root / "TrainTestLabels" / "Labels_x_Train.txt").write_text("1\n1\n")
    (root / "TrainTestLabels" / "Labels_x_Test.txt").write_text("")
    return read_nuswide(root)


@pytest.mark.parametrize("importer, escape", [
    (_folder, "../outside/b.jpg"), (_folder, "/abs/b.jpg"), (_voc, "../../outside/b"), (_coco, "../../outside/b.jpg"),
    (_nuswide, "../../outside/b.jpg"), (_nuswide, "..\\..\\outside\\b.jpg")])
def test_no_importer_reads_outside_the_root(tmp_path, importer, escape):
    _image(tmp_path / "outside" / "b.jpg")  # it exists: only the path check keeps it out
    d = importer(tmp_path, escape)
    assert len(d.paths) == 1 and d.paths[0].endswith("a.jpg")
    assert [(i.kind, i.action) for i in d.issues] == [("path_escapes_root", "excluded")]


def test_symlinks_inside_the_root_are_trusted(tmp_path):
    """The check is on the annotation's text: a dataset whose image folder is a symlink still imports."""
    _image(tmp_path / "ssd" / "a.jpg")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "train2014").symlink_to(tmp_path / "ssd")
    (tmp_path / "labels.csv").write_text("image,labels\ntrain2014/a.jpg,x\n")
    d = read_folder(tmp_path / "root", tmp_path / "labels.csv", None, 0.0, 0)
    assert d.paths == ["train2014/a.jpg"] and d.issues == []
