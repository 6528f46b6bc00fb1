import numpy as np
import pytest
import yaml
from PIL import Image

from benchmarks.project import ROOT, make_project, sh
from pipeline.datasets import read_folder
from pipeline.storage import DataError, Table


def folder(tmp_path, rows, sizes=None):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png", "d.png"]):
        w, h = (sizes or {}).get(name, (40, 30))
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / name)
    table = tmp_path / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    return root, table


def test_folder_import_with_splits(tmp_path):
    root, table = folder(tmp_path, ["image,labels,split", "a.png,circle;square,train", "b.jpg,,test",
                                    "sub/c.png,square,train"])
    d = read_folder(root, table, None, 0.5, 0)
    assert d.classes == ["circle", "square"] and d.paths == ["a.png", "b.jpg", "sub/c.png"]
    assert d.labels.tolist() == [[1, 1], [0, 0], [0, 1]] and d.splits == ["train", "test", "train"]
    d2 = read_folder(root, table, ["square", "circle", "ring"], 0.5, 0)
    assert d2.labels.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]


def test_folder_seeded_split_without_split_column(tmp_path):
    root, table = folder(tmp_path, ["image,labels", "a.png,x", "b.jpg,y", "sub/c.png,x", "d.png,y"])
    a = read_folder(root, table, None, 0.5, 1).splits
    assert a == read_folder(root, table, None, 0.5, 1).splits and set(a) <= {"train", "test"}
    assert set(read_folder(root, table, None, 0.0, 1).splits) == {"train"}


@pytest.mark.parametrize("rows, message", [
    (["image,tags", "a.png,x"], "missing column 'labels'"),
    (["image,labels,split", "a.png,x,val"], "split must be train or test"),
    (["image,labels"], "no rows"),
])
def test_folder_bad_table_is_named(tmp_path, rows, message):
    root, table = folder(tmp_path, rows)
    with pytest.raises(DataError, match=message):
        read_folder(root, table, None, 0.2, 0)


@pytest.mark.parametrize("rows, kind", [
    (["image,labels", "a.png,x", "missing.png,x"], "absent"),
    (["image,labels", "a.png,x", "a.png,y"], "duplicate_id"),
    (["image,labels", "a.png,x", "../labels.csv,x"], "path_escapes_root"),
    (["image,labels", "a.png,x", "/etc/passwd,x"], "path_escapes_root"),
    (["image,labels", "a.png,x", "sub/../../labels.csv,x"], "path_escapes_root"),
    (["image,labels", "a.png,x", "b.jpg,zebra;x"], "unknown_class"),
])
def test_folder_bad_rows_are_excluded_and_reported(tmp_path, rows, kind):
    root, table = folder(tmp_path, rows)
    d = read_folder(root, table, ["x", "y"], 0.0, 0)
    assert d.image_ids == ["a.png"] and d.labels.tolist() == [[1, 0]]
    bad = rows[2].rsplit(",", 1)[0]
    assert [(i.image_id, i.kind, i.action) for i in d.issues] == [(bad, kind, "excluded")]
    assert "labels.csv row 3" in d.issues[0].detail  # the line of the table is named


@pytest.mark.e2e
def test_prepare_and_score_a_folder_dataset(tmp_path):
    root, table = folder(tmp_path, ["image,labels,split", "a.png,circle,train", "b.jpg,square;cross,train",
                                    "sub/c.png,triangle,test", "d.png,,test"], sizes={"d.png": (25, 60)})
    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"].update(format="folder", root=str(root), labels=str(table),
                             classes=["circle", "square", "triangle", "cross"])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("mlpl prepare && mlpl teacher && mlpl score && mlpl init", project)
    manifest = Table(project / "data" / "prepared" / "manifest.parquet")
    assert list(manifest.column("path")) == ["a.png", "b.jpg", "sub/c.png", "d.png"]
    assert manifest.column("labels").tolist()[1] == [0, 1, 0, 1]
    initial = Table(project / "data" / "labels" / "initial.parquet")
    assert initial.column("cut").shape == (4, 4) and np.isfinite(initial.column("cut")).all()
    params["dataset"]["labels"] = str(tmp_path / "nope.csv")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = sh("mlpl prepare", project, check=False)
    assert r.returncode == 2 and "nope.csv" in r.stderr and "Traceback" not in r.stderr
    assert (project / "data" / "prepared" / "manifest.parquet").is_file()  # finished work is kept


def test_each_reader_takes_its_settings_as_its_arguments(tmp_path):
    """A reader's settings class (registered with it) is the one definition of its `dataset` keys: its fields
    are the reading function's keyword arguments, and prepare builds them from params (`labels` is the
    folder reader's `table`; `classes: null` means every class in the table; a missing root is named)."""
    import dataclasses
    import inspect

    from pipeline.datasets import READERS
    from stages.common import Params, ParamsError
    from stages.prepare import check

    for reader in READERS.values():
        signature = inspect.signature(reader.read).parameters
        names = {f.name for f in dataclasses.fields(reader.settings)}
        required = {n for n, p in signature.items() if p.default is inspect.Parameter.empty and n != "out"}
        assert required <= names <= set(signature), reader.name

    root, table = folder(tmp_path, ["image,labels", "a.png,circle"])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"] |= {"format": "folder", "root": str(root), "labels": str(table), "classes": None,
                          "test_fraction": 0.3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    fmt, kwargs, _ = check(Params.load(tmp_path / "params.yaml"))
    assert fmt == "folder" and kwargs == {"root": str(root), "table": str(table), "classes": None,
                                          "test_fraction": 0.3, "seed": params["dataset"]["seed"]}
    params["dataset"] |= {"format": "voc", "root": str(tmp_path / "missing")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="missing: not a directory"):
        check(Params.load(tmp_path / "params.yaml"))
