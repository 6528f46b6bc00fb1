"""Scoring every image's views with the frozen model into a sharded, resumable Zarr store.

One module per concern, so each rule has one home:

- `pipeline.scoring.device`: where and how fast the tower runs (device, precision, views per forward,
  images per loader batch);
- `pipeline.scoring.job`: what to score (ScoreJob, whose `shards` cut the work) and who scores it
  (Workers, this process's place among torchrun ranks: `torchrun_workers`);
- `pipeline.scoring.shards`: the store on disk (creating it, writing finished shards on a background
  thread, done markers, resuming under the same fingerprint);
- `pipeline.scoring.loop`: the scoring loop itself (`score_to_store`).

The names below are the package's interface; `from pipeline.scoring import X` is how stages, tests and
benchmarks use it.
"""

from pipeline.scoring.device import (
    AUTOCAST_DTYPES,
    CPU_FORWARD_PIXELS,
    CUDA_BYTES_PER_PIXEL,
    CUDA_MAX_BATCH_VIEWS,
    PRECISIONS,
    cpu_flags,
    cpu_has_native_bf16,
    forward_slices,
    images_per_batch,
    machine_summary,
    resolve_batch_views,
    resolve_device,
    resolve_precision,
)
from pipeline.scoring.job import BARRIER_TIMEOUT, ScoreJob, Workers, torchrun_workers
from pipeline.scoring.loop import ViewDataset, image_seed, score_to_store
from pipeline.scoring.shards import DONE_NAME, STORE_NAME, ShardWriter, shard_batches, shard_marker

__all__ = [
    "AUTOCAST_DTYPES",
    "BARRIER_TIMEOUT",
    "CPU_FORWARD_PIXELS",
    "CUDA_BYTES_PER_PIXEL",
    "CUDA_MAX_BATCH_VIEWS",
    "DONE_NAME",
    "PRECISIONS",
    "STORE_NAME",
    "ScoreJob",
    "ShardWriter",
    "ViewDataset",
    "Workers",
    "cpu_flags",
    "cpu_has_native_bf16",
    "forward_slices",
    "image_seed",
    "images_per_batch",
    "machine_summary",
    "resolve_batch_views",
    "resolve_device",
    "resolve_precision",
    "score_to_store",
    "shard_batches",
    "shard_marker",
    "torchrun_workers",
]
