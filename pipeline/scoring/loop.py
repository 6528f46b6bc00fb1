"""The scoring loop: every image's views through the frozen model into the sharded Zarr store.

Each image is decoded once in DataLoader workers and all its views are cut from the decoded tensor, with
crops drawn from a per-image random stream (`image_seed`), so an image's views do not depend on its
position or on the batching. The views of up to `batch_images` images go through the tower together, in
forwards of at most `batch_views` views (pipeline.scoring.device); `inference_mode`, channels-last,
autocast where the hardware computes in bf16/fp16 natively; text embeddings are computed once by the
caller. Finished shards are handed to the writer thread of pipeline.scoring.shards while the next ones
are computed.

Several processes (torchrun) cooperate through `Workers`: rank 0 creates the store, every rank scores a
disjoint set of whole shards and writes only those, so the store equals a single-process one.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from torch.utils.data import DataLoader, Dataset

from pipeline.clip import encode_images, image_size_of, logit_scale_of, normalizer_of, scores_to_logits
from pipeline.cut import CutSettings, cut_views, view_boxes
from pipeline.images import decode_image
from pipeline.progress import progress_bar
from pipeline.resume import fingerprint
from pipeline.scoring.dense import dense_size_for, pooled_embeddings
from pipeline.scoring.device import (
    AUTOCAST_DTYPES,
    cpu_class,
    forward_slices,
    images_per_batch,
    resolve_batch_views,
    resolve_device,
    resolve_precision,
)
from pipeline.scoring.job import ScoreJob, Workers
from pipeline.scoring.shards import (
    DONE_NAME,
    STORE_NAME,
    ShardWriter,
    check_fingerprint,
    done_shards,
    prepare_store,
    shard_batches,
    shard_buffers,
)
from pipeline.storage import ids_digest


def image_seed(seed: int, image_id: str) -> np.random.SeedSequence:
    """Per-image random stream: an image's crops depend on its id and the seed, not on its position."""
    return np.random.SeedSequence([seed, zlib.crc32(image_id.encode())])


class ViewDataset(Dataset):
    """Item i: (i, views [V, 3, S, S] float 0..1, every view's box [1 + K + M, 4]). With `score.views: dense`
    the only view is the whole image (at the dense size): the boxes are pooled from its features."""

    def __init__(self, paths: Sequence[str | Path], image_ids: Sequence[str], settings: CutSettings,
                 size: int, seed: int):
        self.paths, self.image_ids, self.settings, self.size, self.seed = paths, image_ids, settings, size, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        rng = np.random.default_rng(image_seed(self.seed, self.image_ids[i]))
        boxes, flips = view_boxes(rng, self.settings)
        cut = slice(0, 1) if self.settings.views == "dense" else slice(None)
        views = cut_views(decode_image(self.paths[i]), boxes[cut], flips[cut], self.size)
        return i, views, torch.from_numpy(boxes)


def _collate(items):
    idx = [i for i, _, _ in items]
    return idx, torch.stack([v for _, v, _ in items]), torch.stack([b for _, _, b in items])


def score_to_store(model: torch.nn.Module, text_emb: torch.Tensor, paths: Sequence[str | Path],
                   image_ids: Sequence[str], job: ScoreJob, work_dir: Path, attrs: dict,
                   max_shards: int | None = None, progress: bool = True,
                   log: Callable[[str], None] = print, workers: Workers | None = None) -> bool:
    """Score all images into `work_dir/store.zarr`, resuming from shards already marked done.

    Returns True when every shard is done. `attrs` describe the run (model, prompts, settings); a
    partial store written under different attrs is discarded rather than mixed with this run. With
    several `workers`, rank 0 prepares the store, each rank scores its own share of the remaining shards
    (`max_shards` counts per rank), and all ranks return after every rank has finished.
    """
    workers = workers or Workers()
    n, n_cls, dim = len(paths), text_emb.shape[0], text_emb.shape[1]
    s = job.settings
    n_tiles, n_crops = s.grid ** 2, s.crops
    dense = s.views == "dense"
    size = dense_size_for(model, s.dense_size) if dense else image_size_of(model)
    device = resolve_device(job.device, workers.local_rank)
    precision = resolve_precision(job.precision, device)
    batch_views = resolve_batch_views(job.batch_views, size, device)
    batch_images = images_per_batch(job.batch_images, batch_views, 1 if dense else 1 + n_tiles + n_crops)
    attrs = {**attrs, "cut": asdict(s), "seed": job.seed, "shard_rows": job.shard_rows,
             "n_images": n, "image_ids_sha256": ids_digest(image_ids), "device": device.type,
             "precision": precision, "cpu": cpu_class(device), "batch_images": batch_images,
             "batch_views": batch_views}
    attrs["fingerprint"] = fingerprint(attrs)
    store_path, done_dir = work_dir / STORE_NAME, work_dir / DONE_NAME
    if workers.rank == 0:
        prepare_store(store_path, done_dir, attrs, text_emb, job, image_ids, n_cls, dim, log)
    workers.barrier()  # the store exists for every rank
    if workers.rank != 0:
        check_fingerprint(store_path, attrs["fingerprint"], workers.rank)
    shard_bounds = job.shards(n)
    done = done_shards(done_dir)
    workers.barrier()  # every rank has read the same done set before any rank marks a new shard
    todo = [k for k in range(len(shard_bounds)) if k not in done][workers.rank::workers.world]
    if max_shards is not None:
        todo = todo[:max_shards]
    batches = shard_batches(shard_bounds, todo, batch_images)
    dataset = ViewDataset(paths, image_ids, s, size, job.seed)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=job.num_workers, collate_fn=_collate,
                        pin_memory=device.type == "cuda")
    mean, std = (t.to(device) for t in normalizer_of(model))
    scale = logit_scale_of(model)
    model = model.to(device=device, memory_format=torch.channels_last)
    text_emb = text_emb.float().to(device)
    autocast = (torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision]) if precision in AUTOCAST_DTYPES
                else contextlib.nullcontext())
    group = zarr.open_group(str(store_path), mode="r+")
    writer = ShardWriter({name: group[name] for name in shard_buffers(0, n_tiles, n_crops, n_cls, dim)}, done_dir)
    buffers: dict[int, dict[str, np.ndarray]] = {}
    remaining = {k: shard_bounds[k][1] - shard_bounds[k][0] for k in todo}
    bar = progress_bar(total=sum(remaining.values()), unit="img", desc="score", disable=not progress, smoothing=0.1)
    try:
        with torch.inference_mode():
            for idx, views, boxes in loader:
                b, v = boxes.shape[:2]
                flat = views.flatten(0, 1)
                embs = []
                for part in forward_slices(len(flat), batch_views):
                    x = ((flat[part].to(device, non_blocking=True) - mean) / std).contiguous(
                        memory_format=torch.channels_last)
                    with autocast:
                        if dense:  # one view per image: its boxes pooled from its features
                            embs.append(F.normalize(pooled_embeddings(model.visual, x, boxes[part].to(device))
                                                    .float().flatten(0, 1), dim=-1))
                        else:
                            embs.append(encode_images(model, x))
                emb = torch.cat(embs) if len(embs) > 1 else embs[0]
                z = scores_to_logits(emb, text_emb, scale).view(b, v, n_cls).cpu().numpy()
                emb = emb.view(b, v, -1)[:, 0].cpu().numpy()
                k = idx[0] // job.shard_rows
                start, end = shard_bounds[k]
                buf = buffers.setdefault(k, shard_buffers(end - start, n_tiles, n_crops, n_cls, dim))
                rows = np.asarray(idx) - start
                buf["global"][rows] = z[:, 0]
                buf["local"][rows] = z[:, 1:1 + n_tiles]
                buf["crops"][rows] = z[:, 1 + n_tiles:]
                buf["boxes"][rows] = boxes[:, 1 + n_tiles:].numpy()
                buf["image_emb"][rows] = emb
                remaining[k] -= b
                bar.update(b)
                if remaining[k] == 0:  # the shard is complete: written whole, then marked done, off this thread
                    writer.put(k, start, end, buffers.pop(k))
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error; finished shards are still saved
            writer.close()
        raise
    finally:
        bar.close()
    writer.close()
    workers.barrier()  # every rank's shards are written before anyone judges completeness
    return len(done_shards(done_dir)) == len(shard_bounds)

