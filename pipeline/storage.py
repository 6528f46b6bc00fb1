"""Storage formats (docs/design.md#data-formats): Parquet label tables, the sharded Zarr score store, atomic outputs.

Tables: one row per image, `image_id`, `split`, and one `fixed_size_list<float32|int8>[C]` column per
quantity, class names as JSON in the schema metadata, so pandas/polars/duckdb read them without us.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

CLASSES_KEY = b"classes"


class DataError(ValueError):
    """Input data is malformed; the message names the file and the key."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it into place, on failure remove it.

    A killed or failing stage therefore never leaves a half-written output that DVC could cache.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        replace_path(tmp, path)
    finally:
        _remove(tmp)


def replace_path(src: Path, dst: Path) -> None:
    """Move src onto dst (file or directory), replacing dst."""
    if dst.is_dir() and not dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


# ---------------------------------------------------------------------------------------------- tables

def label_array(values: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeListArray:
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"label matrix must be 2-D [N, C], got shape {values.shape}")
    flat = pa.array(values.reshape(-1).astype(dtype.to_pandas_dtype()), type=dtype)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


UNIT_KEY = b"unit"  # field metadata: what the numbers of a per-class column are


def write_table(path: str | Path, columns: Mapping[str, object], classes: list[str],
                extra_metadata: Mapping[str, str] | None = None, units: Mapping[str, str] | None = None) -> None:
    """Write a table atomically. 2-D float arrays become fixed_size_list<float32>[C] with field metadata
    unit=logit, 2-D int8 arrays fixed_size_list<int8>[C] with unit=0/1 (`units` overrides, and gives
    other columns one); 1-D arrays/lists become plain columns. The class names are schema metadata."""
    fields, arrays = [], []
    for name, col in columns.items():
        arr = np.asarray(col)
        unit = (units or {}).get(name)
        if arr.ndim == 2:
            if arr.shape[1] != len(classes):
                raise ValueError(f"column {name!r} has {arr.shape[1]} classes, expected {len(classes)}")
            dtype = pa.int8() if arr.dtype == np.int8 else pa.float32()
            unit = unit or ("0/1" if arr.dtype == np.int8 else "logit")
            arrays.append(label_array(arr, dtype))
        else:
            arrays.append(pa.array(arr.tolist() if arr.dtype == object else arr))
        fields.append(pa.field(name, arrays[-1].type, metadata={UNIT_KEY: unit.encode()} if unit else None))
    metadata = {CLASSES_KEY: json.dumps(list(classes)).encode()}
    for k, v in (extra_metadata or {}).items():
        metadata[k.encode()] = v.encode()
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


class Table:
    """A label table read back: numpy arrays per column plus the class names."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: file not found (run the stage that writes it first)")
        try:
            self._table = pq.read_table(self.path)
        except Exception as e:  # pyarrow raises many types for corrupt files
            raise DataError(f"{self.path}: not a readable Parquet file ({e})") from e
        meta = self._table.schema.metadata or {}
        if CLASSES_KEY not in meta:
            raise DataError(f"{self.path}: schema metadata has no 'classes' key")
        self.classes: list[str] = json.loads(meta[CLASSES_KEY])
        self.metadata = {k.decode(): v.decode() for k, v in meta.items() if k != CLASSES_KEY}

    def __len__(self) -> int:
        return self._table.num_rows

    def has(self, column: str) -> bool:
        return column in self._table.column_names

    def column(self, name: str) -> np.ndarray:
        if name not in self._table.column_names:
            raise DataError(f"{self.path}: missing column {name!r} (has {self._table.column_names})")
        col = self._table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
        return np.asarray(col.to_pylist(), dtype=object if pa.types.is_string(col.type) else None)


class RowIndex:
    """The rows of a table's image ids, built once and asked many times; `source` names the table."""

    def __init__(self, all_ids: Sequence[str], source: str | Path):
        self._row_of = {image_id: r for r, image_id in enumerate(all_ids)}
        self.source = source

    def rows(self, image_ids: Sequence[str]) -> np.ndarray:
        """The rows of `image_ids`, in their order; a DataError names an id the table lacks."""
        missing = [i for i in image_ids if i not in self._row_of]
        if missing:
            raise DataError(f"{len(missing)} images not in {self.source} (e.g. {missing[0]}); rerun `dvc repro`")
        return np.array([self._row_of[i] for i in image_ids], dtype=np.int64)


def manifest_index(manifest: Table) -> RowIndex:
    """The manifest's rows by image id."""
    return RowIndex(manifest.column("image_id"), manifest.path)


def manifest_rows(manifest: Table, image_ids: Sequence[str]) -> np.ndarray:
    """The manifest rows of `image_ids`, in their order (for one lookup; manifest_index for several)."""
    return manifest_index(manifest).rows(image_ids)


def manifest_paths(manifest: Table) -> np.ndarray:
    """Absolute-or-cwd-relative image paths of a manifest (its `path` column under metadata `root`), as an
    object array so that callers can select rows with a split mask."""
    root = Path(manifest.metadata.get("root", "."))
    return np.array([root / rel for rel in manifest.column("path")], dtype=object)


# ------------------------------------------------------------------------------------------ zarr store

def create_score_store(path: str | Path, arrays: Mapping[str, tuple[tuple[int, ...], str]], shard_rows: int,
                       chunk_rows: int, attrs: Mapping[str, object],
                       dimension_names: Mapping[str, tuple[str, ...]] | None = None) -> zarr.Group:
    """Create a Zarr v3 group of arrays sharded along the first axis.

    `arrays` maps name → (shape, dtype). Shards hold `shard_rows` images each, so the store is a few
    hundred files whatever N is; a writer always writes whole shards (partial-shard writes from
    concurrent writers would silently lose data).
    """
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    for name, (shape, dtype) in arrays.items():
        rows = shape[0]
        shard = (max(1, min(shard_rows, rows)),) + tuple(shape[1:])
        chunk = (max(1, min(chunk_rows, shard[0])),) + tuple(shape[1:])
        if shard[0] % chunk[0]:
            chunk = shard
        group.create_array(name, shape=shape, dtype=dtype, chunks=chunk, shards=shard, fill_value=0,
                           dimension_names=(dimension_names or {}).get(name))
    group.attrs.update(dict(attrs))
    return group


# What each axis of the score store's arrays is (Zarr v3 dimension_names); docs/outputs.md describes them.
SCORE_DIMENSIONS = {"image_id": ("image",), "global": ("image", "class"), "local": ("image", "tile", "class"),
                    "crops": ("image", "crop", "class"), "boxes": ("image", "crop", "x0_y0_x1_y1"),
                    "image_emb": ("image", "embedding"), "text_emb": ("class", "embedding")}


def ids_digest(image_ids: Sequence[str]) -> str:
    """The score store's `image_ids_sha256` attr: which images, in which order, its rows are."""
    return hashlib.sha256("\n".join(image_ids).encode()).hexdigest()


def open_store(path: str | Path, required: tuple[str, ...] = ()) -> zarr.Group:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: Zarr store not found (run `mlpl score` first)")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as e:
        raise DataError(f"{path}: not a readable Zarr store ({e})") from e
    missing = [k for k in required if k not in group]
    if missing:
        raise DataError(f"{path}: missing arrays {missing}")
    return group


def write_small_store(path: str | Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, object]) -> None:
    """Write small arrays (one chunk each) as a Zarr v3 group, atomically."""
    with atomic_path(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for name, value in arrays.items():
            value = np.asarray(value)
            group.create_array(name, shape=value.shape, dtype=value.dtype,
                               chunks=tuple(max(1, d) for d in value.shape))[...] = value
        group.attrs.update(dict(attrs))


def write_json(path: str | Path, obj: object) -> None:
    """Sorted, indented JSON with a final newline, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the stage that writes it first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def scored_embeddings(scores: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(image_emb [N, D], text_emb [C, D]) of a score store, as float32."""
    store = open_store(scores, required=("image_emb", "text_emb"))
    return np.asarray(store["image_emb"][:], np.float32), np.asarray(store["text_emb"][:], np.float32)
