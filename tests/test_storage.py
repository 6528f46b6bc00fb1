import json

import numpy as np
import pandas as pd
import pytest

from pipeline.storage import (
    DataError,
    Table,
    atomic_path,
    create_score_store,
    manifest_index,
    manifest_rows,
    open_store,
    write_table,
)


def test_manifest_rows_follow_the_ids_order_and_name_a_missing_id(tmp_path):
    path = tmp_path / "manifest.parquet"
    write_table(path, {"image_id": ["a", "b", "c", "d"], "split": ["train"] * 4}, ["x"])
    manifest = Table(path)
    rows = manifest_rows(manifest, ["d", "b", "a"])
    assert rows.tolist() == [3, 1, 0] and rows.dtype == np.int64
    with pytest.raises(DataError, match=r"2 images not in .*manifest.parquet \(e.g. e\); rerun `dvc repro`"):
        manifest_rows(manifest, ["a", "e", "f"])
    index = manifest_index(manifest)  # one index, many lookups (evaluate's label tables)
    assert index.rows(["c"]).tolist() == [2] and index.rows(["d", "b", "a"]).tolist() == [3, 1, 0]
    with pytest.raises(DataError, match=r"1 images not in .*manifest.parquet \(e.g. z\)"):
        index.rows(["z"])


def test_table_roundtrip_and_schema(tmp_path):
    z = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    labels = np.array([[1, 0, 1]] * 5, np.int8)
    path = tmp_path / "t.parquet"
    write_table(path, {"image_id": [f"i{k}" for k in range(5)], "split": ["train"] * 5, "z": z, "labels": labels},
                ["a", "b", "c"], extra_metadata={"root": "x"})
    t = Table(path)
    assert t.classes == ["a", "b", "c"] and t.metadata["root"] == "x" and len(t) == 5
    assert np.array_equal(t.column("z"), z) and t.column("labels").dtype == np.int8
    assert list(t.column("image_id")) == [f"i{k}" for k in range(5)]
    df = pd.read_parquet(path)  # readable without our code
    assert list(df.columns) == ["image_id", "split", "z", "labels"] and len(df.z[0]) == 3
    with pytest.raises(DataError, match="missing column 'nope'"):
        t.column("nope")
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)  # each per-class column says what its numbers are
    assert schema.field("z").metadata == {b"unit": b"logit"} and schema.field("labels").metadata == {b"unit": b"0/1"}
    assert schema.field("split").metadata is None
    write_table(path, {"p": z}, ["a", "b", "c"], units={"p": "probability"})
    assert pq.read_schema(path).field("p").metadata == {b"unit": b"probability"}


def test_table_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.parquet"):
        Table(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match="bad.parquet"):
        Table(bad)


def test_wrong_class_count_rejected(tmp_path):
    with pytest.raises(ValueError, match="classes"):
        write_table(tmp_path / "t.parquet", {"z": np.zeros((2, 4))}, ["a", "b"])


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_path_replaces_directories(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "old").write_text("x")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("y")
    assert [p.name for p in target.iterdir()] == ["new"]


def test_score_store_is_sharded_v3(tmp_path):
    g = create_score_store(tmp_path / "s.zarr", {"global": ((1000, 8), "float16"), "crops": ((1000, 20, 8), "float16")},
                           shard_rows=256, chunk_rows=64, attrs={"model": "m"})
    g["global"][:] = np.ones((1000, 8), np.float16)
    g["crops"][:256] = np.ones((256, 20, 8), np.float16)
    meta = json.loads((tmp_path / "s.zarr" / "global" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["chunk_grid"]["configuration"]["chunk_shape"] == [256, 8]
    files = [p for p in (tmp_path / "s.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(files) == 4 + 1  # 4 shards of `global`, 1 written shard of `crops`
    store = open_store(tmp_path / "s.zarr", required=("global",))
    assert store.attrs["model"] == "m" and store["global"][999, 7] == 1
    with pytest.raises(DataError, match="missing arrays"):
        open_store(tmp_path / "s.zarr", required=("boxes",))
