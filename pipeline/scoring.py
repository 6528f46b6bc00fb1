"""Scoring every image's views with the frozen model into a sharded, resumable Zarr store.

Work is cut into shards of `shard_rows` images, the Zarr shard size along the image axis. A shard is
scored whole, written whole, then marked done by an empty file in `done/`; a rerun skips marked shards.
Batches never cross a shard boundary, so a resumed run sees exactly the batches an uninterrupted one
does and writes byte-identical arrays.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.clip import encode_images, image_size_of, logit_scale_of, normalizer_of, scores_to_logits
from pipeline.cut import CutSettings, cut_views, view_boxes
from pipeline.images import decode_image
from pipeline.storage import create_score_store

STORE_NAME = "store.zarr"
DONE_NAME = "done"


def image_seed(seed: int, image_id: str) -> np.random.SeedSequence:
    """Per-image random stream: an image's crops depend on its id and the seed, not on its position."""
    return np.random.SeedSequence([seed, zlib.crc32(image_id.encode())])


class ViewDataset(Dataset):
    """Item i: (i, views [V, 3, S, S] float 0..1, crop boxes [M, 4])."""

    def __init__(self, paths: Sequence[str | Path], image_ids: Sequence[str], settings: CutSettings,
                 size: int, seed: int):
        self.paths, self.image_ids, self.settings, self.size, self.seed = paths, image_ids, settings, size, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        rng = np.random.default_rng(image_seed(self.seed, self.image_ids[i]))
        boxes, flips = view_boxes(rng, self.settings)
        views = cut_views(decode_image(self.paths[i]), boxes, flips, self.size)
        return i, views, torch.from_numpy(boxes[1 + self.settings.grid ** 2:])


def _collate(items):
    idx = [i for i, _, _ in items]
    return idx, torch.stack([v for _, v, _ in items]), torch.stack([b for _, _, b in items])


@dataclass(frozen=True)
class ScoreJob:
    settings: CutSettings
    seed: int = 0
    shard_rows: int = 256
    chunk_rows: int = 64
    batch_images: int = 16
    num_workers: int = 0

    def shards(self, n: int) -> list[tuple[int, int]]:
        return [(s, min(s + self.shard_rows, n)) for s in range(0, n, self.shard_rows)]


def fingerprint(attrs: dict) -> str:
    return hashlib.sha256(json.dumps(attrs, sort_keys=True, default=str).encode()).hexdigest()


def ids_digest(image_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(image_ids).encode()).hexdigest()


def score_to_store(model: torch.nn.Module, text_emb: torch.Tensor, paths: Sequence[str | Path],
                   image_ids: Sequence[str], job: ScoreJob, work_dir: Path, attrs: dict,
                   max_shards: int | None = None, progress: bool = True,
                   log: Callable[[str], None] = print) -> bool:
    """Score all images into `work_dir/store.zarr`, resuming from shards already marked done.

    Returns True when every shard is done. `attrs` describe the run (model, prompts, settings); a
    partial store written under different attrs is discarded rather than mixed with this run.
    """
    n, n_cls, dim = len(paths), text_emb.shape[0], text_emb.shape[1]
    s = job.settings
    n_tiles, n_crops = s.grid ** 2, s.crops
    attrs = {**attrs, "cut": asdict(s), "seed": job.seed, "shard_rows": job.shard_rows,
             "n_images": n, "image_ids_sha256": ids_digest(image_ids)}
    attrs["fingerprint"] = fingerprint(attrs)
    store_path, done_dir = work_dir / STORE_NAME, work_dir / DONE_NAME
    done = _resume_state(store_path, done_dir, attrs["fingerprint"], log)
    if done is None:
        work_dir.mkdir(parents=True, exist_ok=True)
        arrays = {
            "global": ((n, n_cls), "float16"),
            "local": ((n, n_tiles, n_cls), "float16"),
            "crops": ((n, n_crops, n_cls), "float16"),
            "boxes": ((n, n_crops, 4), "float32"),
            "image_emb": ((n, dim), "float16"),
        }
        group = create_score_store(store_path, arrays, job.shard_rows, job.chunk_rows, attrs)
        group.create_array("text_emb", shape=tuple(text_emb.shape), dtype="float32", chunks=tuple(text_emb.shape))
        group["text_emb"][:] = text_emb.numpy()
        done_dir.mkdir(parents=True, exist_ok=True)
        done = set()
    group = zarr.open_group(str(store_path), mode="r+")
    todo = [k for k, _ in enumerate(job.shards(n)) if k not in done]
    if max_shards is not None:
        todo = todo[:max_shards]
    shard_bounds = job.shards(n)
    batches = [list(range(b, min(b + job.batch_images, shard_bounds[k][1])))
               for k in todo for b in range(shard_bounds[k][0], shard_bounds[k][1], job.batch_images)]
    dataset = ViewDataset(paths, image_ids, s, image_size_of(model), job.seed)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=job.num_workers, collate_fn=_collate)
    mean, std = normalizer_of(model)
    scale = logit_scale_of(model)
    model = model.to(memory_format=torch.channels_last)
    text_emb = text_emb.float()
    buffers: dict[int, dict[str, np.ndarray]] = {}
    remaining = {k: shard_bounds[k][1] - shard_bounds[k][0] for k in todo}
    n_todo = sum(remaining.values())
    bar = tqdm(total=n_todo, unit="img", desc="score", disable=not progress, smoothing=0.1)
    with torch.inference_mode():
        for idx, views, boxes in loader:
            b, v = views.shape[:2]
            x = ((views.flatten(0, 1) - mean) / std).contiguous(memory_format=torch.channels_last)
            emb = encode_images(model, x)
            z = scores_to_logits(emb, text_emb, scale).view(b, v, n_cls).numpy()
            emb = emb.view(b, v, -1)[:, 0].numpy()
            k = idx[0] // job.shard_rows
            start, end = shard_bounds[k]
            buf = buffers.setdefault(k, {
                "global": np.zeros((end - start, n_cls), np.float16),
                "local": np.zeros((end - start, n_tiles, n_cls), np.float16),
                "crops": np.zeros((end - start, n_crops, n_cls), np.float16),
                "boxes": np.zeros((end - start, n_crops, 4), np.float32),
                "image_emb": np.zeros((end - start, dim), np.float16),
            })
            rows = np.asarray(idx) - start
            buf["global"][rows] = z[:, 0]
            buf["local"][rows] = z[:, 1:1 + n_tiles]
            buf["crops"][rows] = z[:, 1 + n_tiles:]
            buf["boxes"][rows] = boxes.numpy()
            buf["image_emb"][rows] = emb
            remaining[k] -= b
            bar.update(b)
            if remaining[k] == 0:  # the shard is complete: write it whole, then mark it done
                for name, arr in buffers.pop(k).items():
                    group[name][start:end] = arr
                (done_dir / f"shard-{k:06d}").touch()
    bar.close()
    return len(_done_shards(done_dir)) == len(shard_bounds)


def _done_shards(done_dir: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in done_dir.glob("shard-*")} if done_dir.is_dir() else set()


def _resume_state(store_path: Path, done_dir: Path, fp: str, log) -> set[int] | None:
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
    done = _done_shards(done_dir)
    if done:
        log(f"resuming: {len(done)} shard(s) already scored in {store_path.parent}")
    return done
