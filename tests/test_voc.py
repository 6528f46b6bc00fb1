import numpy as np
import pytest
from PIL import Image

from pipeline.datasets import VOC_CLASSES, read_voc
from pipeline.storage import DataError

XML = """<annotation><filename>{id}.jpg</filename>{objects}</annotation>"""
OBJ = "<object><name>{name}</name><difficult>{difficult}</difficult></object>"
BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><object><name>&lol3;</name></object></annotation>"""


def voc_tree(tmp_path, annotations: dict[str, list[tuple[str, int]]], trainval, test):
    root = tmp_path / "VOCdevkit" / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    for image_id, objects in annotations.items():
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        objs = "".join(OBJ.format(name=n, difficult=d) for n, d in objects)
        (root / "Annotations" / f"{image_id}.xml").write_text(XML.format(id=image_id, objects=objs))
    (root / "ImageSets/Main/trainval.txt").write_text("\n".join(trainval) + "\n")
    (root / "ImageSets/Main/test.txt").write_text("\n".join(test) + "\n")
    return root


def test_voc_labels_splits_and_difficult(tmp_path):
    root = voc_tree(tmp_path, {"000001": [("dog", 0), ("person", 1)], "000002": [("cat", 0)],
                               "000003": [("person", 1)]}, ["000001", "000002"], ["000003"])
    d = read_voc(root)
    assert d.classes == list(VOC_CLASSES) and d.splits == ["train", "train", "test"]
    assert d.paths[0] == "JPEGImages/000001.jpg"
    dog, person, cat = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person"), VOC_CLASSES.index("cat")
    assert d.labels[0, dog] == 1 and d.labels[0, person] == 1 and d.labels[1, cat] == 1 and d.labels[0].sum() == 2
    strict = read_voc(root, include_difficult=False)
    assert strict.labels[0, person] == 0 and strict.labels[2].sum() == 0


def test_voc_entity_bomb_is_refused_with_the_file_named(tmp_path):
    root = voc_tree(tmp_path, {"000001": [("dog", 0)], "000002": [("cat", 0)]}, ["000001", "000002"], [])
    (root / "Annotations" / "000001.xml").write_text(BOMB)
    d = read_voc(root)  # the unsafe file is refused, never expanded; the image is excluded and reported
    assert d.image_ids == ["000002"]
    [issue] = d.issues
    assert (issue.image_id, issue.kind, issue.action) == ("000001", "bad_annotation", "excluded")
    assert "000001.xml: unsafe or malformed XML (EntitiesForbidden" in issue.detail


@pytest.mark.parametrize("break_it, kind, kept", [
    (lambda r: (r / "Annotations" / "000001.xml").unlink(), "bad_annotation", ["000002"]),
    (lambda r: (r / "JPEGImages" / "000001.jpg").unlink(), "absent", ["000002"]),
    (lambda r: (r / "Annotations" / "000001.xml").write_text(XML.format(id=1, objects=OBJ.format(
        name="unicorn", difficult=0))), "unknown_class", ["000002"]),
    # in both image sets: the trainval row claims the id, the test row is excluded
    (lambda r: (r / "ImageSets/Main/test.txt").write_text("000002\n000001\n"), "duplicate_id", ["000001", "000002"]),
    (lambda r: (r / "ImageSets/Main/test.txt").write_text("000002\n../../../../etc/passwd\n"), "path_escapes_root",
     ["000001", "000002"]),
])
def test_voc_bad_rows_are_excluded_and_reported(tmp_path, break_it, kind, kept):
    root = voc_tree(tmp_path, {"000001": [("dog", 0)], "000002": [("cat", 0)]}, ["000001"], ["000002"])
    break_it(root)
    d = read_voc(root)
    assert [(i.kind, i.action) for i in d.issues] == [(kind, "excluded")]
    assert d.image_ids == kept and d.splits == ["train", "test"][2 - len(kept):]


def test_voc_bad_layout_is_named(tmp_path):
    root = voc_tree(tmp_path, {"000001": [("dog", 0)]}, ["000001"], [])
    (root / "ImageSets/Main/test.txt").unlink()
    with pytest.raises(DataError, match="image set file"):
        read_voc(root)
    with pytest.raises(DataError, match="not a VOC directory"):
        read_voc(tmp_path)


@pytest.mark.e2e
def test_prepare_stage_imports_voc(tmp_path):
    import yaml

    from benchmarks.project import make_project, sh
    from pipeline.storage import Table
    from tests.dvcproject import score_with_tiny_teacher

    root = voc_tree(tmp_path, {"000001": [("dog", 0)], "000002": [("cat", 0), ("dog", 1)]}, ["000001"], ["000002"])
    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"].update(format="voc", root=str(root), include_difficult=False)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("mlpl prepare", project)
    m = Table(project / "data" / "prepared" / "manifest.parquet")
    assert list(m.column("split")) == ["train", "test"] and m.metadata["source"] == "voc"
    assert m.column("labels")[1].sum() == 1  # the difficult dog is ignored
    store = score_with_tiny_teacher(project, tmp_path)
    assert store["global"].shape == (2, 20) and store["crops"].shape[:2] == (2, params["score"]["crops"])
