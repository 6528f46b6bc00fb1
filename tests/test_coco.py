import json

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets import read_coco
from pipeline.storage import DataError

CATS = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]


def coco_tree(tmp_path, train_anns, val_anns):
    root = tmp_path / "coco"
    train = [(1, "COCO_train2014_000000000001.jpg"), (2, "COCO_train2014_000000000002.jpg")]
    for split, images in (("train2014", train), ("val2014", [(7, "COCO_val2014_000000000007.jpg")])):
        (root / split).mkdir(parents=True)
        for _, name in images:
            Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / split / name)
        anns = train_anns if split == "train2014" else val_anns
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps({
            "images": [{"id": i, "file_name": n} for i, n in images], "categories": CATS,
            "annotations": [{"image_id": i, "category_id": c} for i, c in anns]}))
    return root


def test_coco_labels_and_splits(tmp_path):
    d = read_coco(coco_tree(tmp_path, [(1, 1), (1, 18), (1, 18), (2, 3)], [(7, 1)]))
    assert d.classes == ["person", "car", "dog"] and d.splits == ["train", "train", "test"]
    assert d.labels.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 0]]
    assert d.image_ids[0] == "COCO_train2014_000000000001" and d.paths[2] == "val2014/COCO_val2014_000000000007.jpg"


@pytest.mark.parametrize("train_anns, kind, image_id", [
    ([(1, 99), (2, 3)], "unknown_class", "COCO_train2014_000000000001"),  # category 99 is not in the file
    ([(1, 1), (5, 1)], "orphan_annotation", ""),  # annotation of an image that is not listed
])
def test_coco_bad_annotations_are_reported(tmp_path, train_anns, kind, image_id):
    d = read_coco(coco_tree(tmp_path, train_anns, []))
    [issue] = d.issues
    assert (issue.image_id, issue.kind, issue.action) == (image_id, kind, "excluded")
    assert "instances_train2014.json" in issue.detail
    assert len(d.image_ids) == 3 - (kind == "unknown_class")


def test_coco_duplicates_and_escaping_paths_are_reported(tmp_path):
    root = coco_tree(tmp_path, [], [])
    path = root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["images"] += [{"id": 7, "file_name": "again.jpg"},  # same numeric id: first entry counts
                       {"id": 8, "file_name": "../train2014/COCO_train2014_000000000001.jpg"},  # same stem as train
                       {"id": 9, "file_name": "../../outside.jpg"}]
    path.write_text(json.dumps(data))
    d = read_coco(root)
    assert [(i.image_id, i.kind) for i in d.issues] == [
        ("again", "duplicate_id"), ("COCO_train2014_000000000001", "duplicate_id"), ("outside", "path_escapes_root")]
    assert d.splits == ["train", "train", "test"]


def test_coco_missing_image_and_bad_json(tmp_path):
    root = coco_tree(tmp_path, [], [])
    (root / "val2014" / "COCO_val2014_000000000007.jpg").unlink()
    d = read_coco(root)
    assert [(i.path, i.kind) for i in d.issues] == [("val2014/COCO_val2014_000000000007.jpg", "absent")]
    assert d.splits == ["train", "train"]
    (root / "annotations" / "instances_train2014.json").write_text("{not json")
    with pytest.raises(DataError, match="instances_train2014.json: not a COCO instances file"):
        read_coco(root)


@pytest.mark.e2e
def test_prepare_stage_imports_coco(tmp_path):
    import yaml

    from benchmarks.project import make_project, sh
    from pipeline.storage import Table
    from tests.dvcproject import score_with_tiny_teacher

    root = coco_tree(tmp_path, [(1, 1), (2, 3)], [(7, 18)])
    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"].update(format="coco", root=str(root))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("mlpl prepare", project)
    m = Table(project / "data" / "prepared" / "manifest.parquet")
    assert m.classes == ["person", "car", "dog"] and list(m.column("split")) == ["train", "train", "test"]
    assert score_with_tiny_teacher(project, tmp_path)["global"].shape == (3, 3)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"]["root"] = str(tmp_path / "nowhere")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = sh("mlpl prepare", project, check=False)
    assert r.returncode == 2 and "nowhere: not a directory" in r.stderr
