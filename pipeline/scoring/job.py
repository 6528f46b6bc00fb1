"""What to score and who scores it: the settings of a scoring run (ScoreJob) and this process's place among
cooperating scorers (Workers, from torchrun's environment by `torchrun_workers`).

The job fixes the shard cut (`shards`), the unit of work, writing and resuming (pipeline.scoring.shards);
`device`, `precision` and `batch_views` may be left to the rules of pipeline.scoring.device.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from pipeline.cut import CutSettings

# Ranks wait at barriers while the slowest finishes its shards (hours on CPUs for a big dataset); a dead
# rank does not leave the others waiting this long, torchrun tears the whole group down.
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class ScoreJob:
    """How to score. `device`, `precision` and `batch_views` may be "auto"/None: see the resolve_* functions."""

    settings: CutSettings
    seed: int = 0
    shard_rows: int = 256
    chunk_rows: int = 64
    batch_images: int = 16
    num_workers: int = 0
    batch_views: int | None = None  # views per forward; None = chosen for the device
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def shards(self, n: int) -> list[tuple[int, int]]:
        return [(s, min(s + self.shard_rows, n)) for s in range(0, n, self.shard_rows)]


@dataclass(frozen=True)
class Workers:
    """This process's place among cooperating scorers (torchrun). `barrier` blocks until every rank calls it."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    barrier: Callable[[], None] = field(default=lambda: None, compare=False)


@contextlib.contextmanager
def torchrun_workers() -> Iterator[Workers]:
    """This process's Workers from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK); one worker without.

    gloo serves CPU and GPU nodes alike: the ranks only synchronise at barriers, no tensors travel.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Workers()
        return
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield Workers(rank=dist.get_rank(), world=dist.get_world_size(),
                      local_rank=int(os.environ.get("LOCAL_RANK", "0")), barrier=dist.barrier)
    finally:
        dist.destroy_process_group()
