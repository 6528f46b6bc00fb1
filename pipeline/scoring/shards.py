"""The score store's shards on disk: creating the Zarr store, writing finished shards, and resuming.

Work is cut into shards of `shard_rows` images, the Zarr shard size along the image axis. A shard is
scored whole, written whole (on a background thread, ShardWriter), then marked done by an empty file in
`done/`; a rerun skips marked shards. Batches never cross a shard boundary (`shard_batches`), so a resumed
run sees exactly the batches an uninterrupted one does and writes byte-identical arrays. A partial store
is kept only if it was written under the same fingerprint (settings, data, device type, precision);
otherwise it is discarded rather than mixed with this run.
"""

from __future__ import annotations

import queue
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import zarr

from pipeline.scoring.job import ScoreJob
from pipeline.storage import SCORE_DIMENSIONS, create_score_store

STORE_NAME = "store.zarr"
DONE_NAME = "done"


def shard_batches(shard_bounds: Sequence[tuple[int, int]], shards: Sequence[int], batch_images: int,
                  ) -> list[list[int]]:
    """Image-index batches of the given shards, in order; a batch never crosses a shard boundary."""
    return [list(range(b, min(b + batch_images, shard_bounds[k][1])))
            for k in shards for b in range(shard_bounds[k][0], shard_bounds[k][1], batch_images)]


# ---------------------------------------------------------------------------------------- shard writer

class ShardWriter:
    """Writes finished shards on one background thread, so Zarr encoding overlaps the next forwards.

    The queue is bounded (memory stays flat when writing is slower than scoring). A shard's done marker is
    touched only after every one of its arrays is written; after the first failure nothing more is written
    or marked and the error is re-raised in the producer by the next `put` or by `close`.
    """

    def __init__(self, arrays: Mapping[str, object], done_dir: Path, max_pending: int = 2):
        self._arrays, self._done_dir = arrays, done_dir
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self._thread.start()

    def put(self, shard: int, start: int, end: int, data: dict[str, np.ndarray]) -> None:
        self._raise()
        self._queue.put((shard, start, end, data))  # the writer keeps draining after a failure: never blocks forever

    def close(self) -> None:
        """Wait until every queued shard is written (or dropped after a failure), then re-raise any failure."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing scores failed: {self._error}") from self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            shard, start, end, data = item
            try:
                for name, arr in data.items():
                    self._arrays[name][start:end] = arr
                (self._done_dir / shard_marker(shard)).touch()
            except BaseException as e:  # handed to the producer thread, which re-raises it
                self._error = e


def shard_marker(k: int) -> str:
    return f"shard-{k:06d}"


# ------------------------------------------------------------------------------- the store: create, resume

def shard_buffers(rows: int, n_tiles: int, n_crops: int, n_cls: int, dim: int) -> dict[str, np.ndarray]:
    """One shard's arrays, filled in memory by the scorer and written whole by ShardWriter."""
    return {
        "global": np.zeros((rows, n_cls), np.float16),
        "local": np.zeros((rows, n_tiles, n_cls), np.float16),
        "crops": np.zeros((rows, n_crops, n_cls), np.float16),
        "boxes": np.zeros((rows, n_crops, 4), np.float32),
        "image_emb": np.zeros((rows, dim), np.float16),
    }


def prepare_store(store_path: Path, done_dir: Path, attrs: dict, text_emb: torch.Tensor, job: ScoreJob,
                  image_ids: Sequence[str], n_cls: int, dim: int, log: Callable[[str], None]) -> None:
    """Keep a partial store written with the same fingerprint, else start afresh (markers first, so that a
    crash in between never leaves old markers next to a new store)."""
    if resume_state(store_path, done_dir, attrs["fingerprint"], log) is not None:
        return
    if done_dir.exists():
        shutil.rmtree(done_dir)
    n = len(image_ids)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    # the store's arrays: a shard's buffers (shard_buffers) with n rows
    arrays = {name: ((n, *b.shape[1:]), b.dtype.name)
              for name, b in shard_buffers(0, job.settings.grid ** 2, job.settings.crops, n_cls, dim).items()}
    group = create_score_store(store_path, arrays, job.shard_rows, job.chunk_rows, attrs, SCORE_DIMENSIONS)
    group.create_array("text_emb", shape=tuple(text_emb.shape), dtype="float32", chunks=tuple(text_emb.shape),
                       dimension_names=SCORE_DIMENSIONS["text_emb"])
    group["text_emb"][:] = text_emb.float().cpu().numpy()
    group.create_array("image_id", shape=(n,), dtype=str, chunks=(max(1, n),),
                       dimension_names=SCORE_DIMENSIONS["image_id"])
    group["image_id"][:] = np.asarray(image_ids, dtype=str)  # row i of every array is this image
    done_dir.mkdir(parents=True, exist_ok=True)


def check_fingerprint(store_path: Path, fp: str, rank: int) -> None:
    found = zarr.open_group(str(store_path), mode="r").attrs.get("fingerprint")
    if found != fp:
        raise RuntimeError(f"rank {rank}: the score store was prepared with other settings than this rank's "
                           "(every rank must run with the same params, data and device type)")


def done_shards(done_dir: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in done_dir.glob("shard-*")} if done_dir.is_dir() else set()


def resume_state(store_path: Path, done_dir: Path, fp: str, log) -> set[int] | None:
    """Shards already done by an earlier run with the same fingerprint, or None to start afresh."""
    if not (store_path / "zarr.json").is_file():
        return None
    try:
        old = zarr.open_group(str(store_path), mode="r").attrs.get("fingerprint")
    except Exception:
        old = None
    if old != fp:
        log(f"discarding partial scores in {store_path.parent}: written with other settings")
        return None
    orphans = remove_orphan_writes(store_path)
    if orphans:
        log(f"removed {orphans} half-written chunk file(s) a killed run left in {store_path}")
    done = done_shards(done_dir)
    if done:
        log(f"resuming: {len(done)} shard(s) already scored in {store_path.parent}")
    return done


def remove_orphan_writes(store_path: Path) -> int:
    """Delete the temporary files of chunk writes a killed run left behind; returns how many.

    Zarr's LocalStore writes a chunk to `<chunk>.<uuid>.partial` and renames it into place; a SIGKILL
    between the two leaves the `.partial` file. Its shard was never marked done, so it is rewritten on
    resume, and the orphan would otherwise ship inside the finished store."""
    orphans = list(store_path.rglob("*.partial"))
    for p in orphans:
        p.unlink(missing_ok=True)
    return len(orphans)

