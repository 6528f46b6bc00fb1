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
from typing import ClassVar

from pipeline.cut import CutSettings
from pipeline.scoring.device import PRECISIONS
from pipeline.settings import Settings, setting

# Ranks wait at barriers while the slowest finishes its shards (hours on CPUs for a big dataset); a dead
# rank does not leave the others waiting this long, torchrun tears the whole group down.
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class ScoreJob(Settings):
    """How to score: section `score` (its views: `settings`, read from the same section). `device`,
    `precision` and `batch_views` may be "auto"/None: see the resolve_* functions."""

    settings: CutSettings = CutSettings()
    seed: int = setting(0)
    shard_rows: int = setting(256, ge=1)
    chunk_rows: int = setting(64, ge=1)
    batch_images: int = setting(16, ge=1)
    num_workers: int = setting(0, ge=0)
    batch_views: int | None = setting(None, ge=1, auto=True)  # views per forward; auto (None): chosen for the device
    precision: str = setting("auto", choices=PRECISIONS)
    device: str = setting("auto")  # auto | cpu | cuda | cuda:N

    SECTION: ClassVar[str] = "score"

    def relation_errors(self) -> list[str]:
        if self.device not in ("auto", "cpu", "cuda") and not (
                self.device.startswith("cuda:") and self.device[5:].isdigit()):
            return [f"score.device must be auto, cpu, cuda or cuda:N, got {self.device!r}"]
        return []

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
