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


@pytest.mark.parametrize("train_anns, message", [
    ([(1, 99)], "unknown category id 99"),
    ([(5, 1)], "unknown image id 5"),
])
def test_coco_bad_annotations_are_named(tmp_path, train_anns, message):
    with pytest.raises(DataError, match=message):
        read_coco(coco_tree(tmp_path, train_anns, []))


def test_coco_missing_image_and_bad_json(tmp_path):
    root = coco_tree(tmp_path, [], [])
    (root / "val2014" / "COCO_val2014_000000000007.jpg").unlink()
    with pytest.raises(DataError, match="absent"):
        read_coco(root)
    (root / "annotations" / "instances_train2014.json").write_text("{not json")
    with pytest.raises(DataError, match="instances_train2014.json: not a COCO instances file"):
        read_coco(root)


def test_prepare_stage_imports_coco(tmp_path):
    import yaml

    from pipeline.storage import Table
    from tests.dvcproject import make_project, score_with_tiny_teacher, sh

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
