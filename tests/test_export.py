import csv
import json

import numpy as np
from PIL import Image

from pipeline.datasets import read_folder
from pipeline.export import coco_dict, csv_rows


def test_csv_export_reads_back_as_a_folder_dataset(tmp_path):
    classes = ["cat", "dog", "owl"]
    logits = np.array([[2.0, -1.0, 0.1], [-3.0, -0.2, -5.0], [0.0, 4.0, 1.0]])  # σ(0) = 0.5 counts as a label
    paths = ["a.png", "sub/b.png", "c.png"]
    for p in paths:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / p)
    rows = csv_rows(paths, logits, classes, 0.5, ["train", "train", "test"])
    assert [r["labels"] for r in rows] == ["cat;owl", "", "cat;dog;owl"]
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "labels", "split"])
        writer.writeheader()
        writer.writerows(rows)
    data = read_folder(tmp_path, tmp_path / "labels.csv", classes, 0.2, 0)
    assert data.paths == paths and data.splits == ["train", "train", "test"]
    assert data.labels.tolist() == (1 / (1 + np.exp(-logits)) >= 0.5).astype(int).tolist()


def test_coco_export_has_one_scored_annotation_per_label():
    logits = np.array([[2.0, -1.0], [-3.0, 0.5]])
    d = json.loads(json.dumps(coco_dict(["x.jpg", "y.jpg"], logits, ["cat", "dog"], 0.6)))
    assert d["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert [(a["image_id"], a["category_id"]) for a in d["annotations"]] == [(1, 1), (2, 2)]
    assert d["annotations"][0]["score"] == round(1 / (1 + np.exp(-2.0)), 6)
    assert {i["id"]: i["file_name"] for i in d["images"]} == {1: "x.jpg", 2: "y.jpg"}
