import numpy as np
import pytest
from PIL import Image

from pipeline.datasets import read_nuswide
from pipeline.storage import DataError


def nus_tree(tmp_path, present=("actor/1.jpg", "actor/2.jpg", "sky/3.jpg")):
    root = tmp_path / "nus"
    (root / "ImageList").mkdir(parents=True)
    (root / "TrainTestLabels").mkdir()
    (root / "Concepts81.txt").write_text("sky\nperson\n")
    (root / "ImageList" / "TrainImagelist.txt").write_text("actor\\1.jpg\nactor\\2.jpg\n")
    (root / "ImageList" / "TestImagelist.txt").write_text("sky\\3.jpg\n")
    for concept, train, test in (("sky", "0\n1\n", "1\n"), ("person", "1\n1\n", "0\n")):
        (root / "TrainTestLabels" / f"Labels_{concept}_Train.txt").write_text(train)
        (root / "TrainTestLabels" / f"Labels_{concept}_Test.txt").write_text(test)
    for rel in present:
        (root / "Flickr" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "Flickr" / rel)
    return root


def test_nuswide_lists_and_labels(tmp_path):
    d = read_nuswide(nus_tree(tmp_path))
    assert d.classes == ["sky", "person"] and d.splits == ["train", "train", "test"]
    assert d.paths[0] == "Flickr/actor/1.jpg" and d.image_ids[2] == "sky/3.jpg"
    assert d.labels.tolist() == [[0, 1], [1, 1], [1, 0]] and d.skipped == []


def test_nuswide_absent_images_are_skipped_and_counted(tmp_path):
    d = read_nuswide(nus_tree(tmp_path, present=("actor/1.jpg", "sky/3.jpg")))
    assert d.skipped == ["Flickr/actor/2.jpg"] and d.labels.tolist() == [[0, 1], [1, 0]]
    assert [(i.image_id, i.kind, i.action) for i in d.issues] == [("actor/2.jpg", "absent", "excluded")]
    empty = read_nuswide(nus_tree(tmp_path / "empty", present=()))  # `prepare` refuses it: nothing to do
    assert empty.image_ids == [] and empty.labels.shape == (0, 2) and len(empty.skipped) == 3


def test_nuswide_duplicates_and_escaping_paths_are_reported(tmp_path):
    root = nus_tree(tmp_path)
    (root / "ImageList" / "TestImagelist.txt").write_text("sky\\3.jpg\nactor\\1.jpg\n..\\..\\x.jpg\n")
    for concept in ("sky", "person"):
        (root / "TrainTestLabels" / f"Labels_{concept}_Test.txt").write_text("1\n0\n1\n")
    d = read_nuswide(root)
    assert [(i.image_id, i.kind) for i in d.issues] == [("actor/1.jpg", "duplicate_id"),
                                                        ("../../x.jpg", "path_escapes_root")]
    assert d.image_ids == ["actor/1.jpg", "actor/2.jpg", "sky/3.jpg"] and d.splits == ["train", "train", "test"]


def test_nuswide_bad_label_file_is_named(tmp_path):
    root = nus_tree(tmp_path)
    (root / "TrainTestLabels" / "Labels_person_Train.txt").write_text("1\n")
    with pytest.raises(DataError, match="Labels_person_Train.txt: expected 2 lines"):
        read_nuswide(root)
    with pytest.raises(DataError, match="not a NUS-WIDE directory"):
        read_nuswide(tmp_path)


@pytest.mark.e2e
def test_prepare_and_score_nuswide(tmp_path):
    import yaml

    from benchmarks.project import make_project, sh
    from tests.dvcproject import score_with_tiny_teacher

    root = nus_tree(tmp_path, present=("actor/1.jpg", "sky/3.jpg"))
    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"].update(format="nuswide", root=str(root))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = sh("mlpl prepare", project)
    # reported, not silent; "sky" has no positive train image left
    assert "data issues: 1 excluded, 1 kept (absent 1, no_positives 1)" in r.stdout
    assert "1 train + 1 test images" in r.stdout
    import pyarrow.parquet as pq

    report = pq.read_table(project / "reports" / "data_issues.parquet").to_pylist()
    assert [(r["image_id"], r["kind"], r["action"]) for r in report] == [("actor/2.jpg", "absent", "excluded"),
                                                                         ("", "no_positives", "kept")]
    assert score_with_tiny_teacher(project, tmp_path)["global"].shape == (2, 2)
