import csv
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets import read_folder
from pipeline.export import coco_dict, csv_rows, export_format, locked_params, unlabelled
from stages.common import params_digest


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
    d = json.loads(json.dumps(coco_dict(["x.jpg", "y.jpg"], logits, ["cat", "dog"], 0.6, [(40, 30), None],
                                        {"labels": "refined", "params_sha256": "abc"})))
    assert d["categories"] == [{"id": 1, "name": "cat", "supercategory": "object"},
                               {"id": 2, "name": "dog", "supercategory": "object"}]
    assert [(a["image_id"], a["category_id"]) for a in d["annotations"]] == [(1, 1), (2, 2)]
    assert d["annotations"][0]["score"] == round(1 / (1 + np.exp(-2.0)), 6)
    assert d["images"] == [{"id": 1, "file_name": "x.jpg", "width": 40, "height": 30}, {"id": 2, "file_name": "y.jpg"}]
    assert d["info"] == {"description": "mlpl pseudo labels", "threshold": 0.6, "labels": "refined",
                         "params_sha256": "abc"}


def test_export_format_follows_the_suffix_and_a_mismatch_is_an_error():
    assert export_format("a.csv", None) == "csv" and export_format("a.JSON", None) == "coco"
    assert export_format("a.json", "coco") == "coco" and export_format("labels.txt", "csv") == "csv"
    with pytest.raises(ValueError, match="the suffix .csv is for --format csv, not coco"):
        export_format("a.csv", "coco")
    with pytest.raises(ValueError, match="cannot tell the format from the suffix '.txt'"):
        export_format("labels.txt", None)
    with pytest.raises(ValueError, match="--format must be one of"):
        export_format("a.csv", "xml")
    assert unlabelled(np.array([[2.0, -1.0], [-3.0, -0.5], [-1.0, -2.0]]), 0.5) == 2


def test_the_params_digest_is_the_runs_as_dvc_lock_records_them():
    lock = {"stages": {
        "mask": {"params": {"params.yaml": {"ratio": 0.1, "seed": 0}}, "outs": [{"path": "o.parquet", "md5": "aa"}]},
        "sew": {"params": {"params.yaml": {"sew.lr": 0.002}}, "outs": [{"path": "r.parquet", "md5": "bb"}]}}}
    params = locked_params(lock, "r.parquet", "bb")
    assert params == {"params.yaml:ratio": 0.1, "params.yaml:seed": 0, "params.yaml:sew.lr": 0.002}
    assert locked_params(lock, "r.parquet", "cc") is None  # the file changed since the run: its params unknown
    assert locked_params(lock, "x.parquet", "bb") is None and locked_params({}, "r.parquet", "bb") is None
    other = {"stages": {**lock["stages"], "sew": {**lock["stages"]["sew"],
                                                  "params": {"params.yaml": {"sew.lr": 0.001}}}}}
    assert params_digest(params) != params_digest(locked_params(other, "r.parquet", "bb"))
    assert params_digest(params) == params_digest(dict(reversed(params.items())))  # order does not count
