"""Scoring every image's views with the frozen model into a sharded, resumable Zarr store.

Work is cut into shards of `shard_rows` images, the Zarr shard size along the image axis. A shard is
scored whole, written whole, then marked done by an empty file in `done/`; a rerun skips marked shards.
Batches never cross a shard boundary, so a resumed run sees exactly the batches an uninterrupted one
does and writes byte-identical arrays.

Speed (docs/design.md#scale): each image is decoded once in DataLoader workers and all its views are cut from the
decoded tensor; the views of up to `batch_images` images go through the tower together, in forwards of at
most `batch_views` views (sized for the device); `inference_mode`, channels-last, autocast where the
hardware computes in bf16/fp16 natively; text embeddings are computed once by the caller; a background
thread encodes and writes finished shards while the next ones are computed.

Several processes (torchrun) cooperate through `Workers`: rank 0 creates the store, every rank scores a
disjoint set of whole shards and writes only those, so the store equals a single-process one.
"""

from __future__ import annotations

import contextlib
import math
import platform
import queue
import shutil
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset

from pipeline.clip import encode_images, image_size_of, logit_scale_of, normalizer_of, scores_to_logits
from pipeline.cut import CutSettings, cut_views, view_boxes
from pipeline.images import decode_image
from pipeline.progress import progress_bar
from pipeline.resume import fingerprint
from pipeline.storage import SCORE_DIMENSIONS, create_score_store, ids_digest

STORE_NAME = "store.zarr"
DONE_NAME = "done"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Input pixels (views × side²) per forward on CPU. 2 M pixels = 480 views of a 64 px tower (the embedded
# default: one forward per batch) or 40 views of a 224 px one, whose activations then stay in a few hundred
# MB while the convolution GEMMs (M = views × H × W) remain large enough to run near the matmul peak.
CPU_FORWARD_PIXELS = 1 << 21
# Bytes of device memory per input pixel at the peak of a half-precision forward (widest early activations
# of a ResNet stem, a few alive at once), with margin; sizes CUDA forwards from the free memory.
CUDA_BYTES_PER_PIXEL = 256
CUDA_MAX_BATCH_VIEWS = 4096


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


# ---------------------------------------------------------------------------- device, precision, batch size

def cpu_flags() -> set[str]:
    """Instruction-set flags of this CPU (Linux /proc/cpuinfo: x86 `flags`, ARM `Features`); empty if unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """True when the CPU multiplies bf16 in hardware (x86 AVX512-BF16 or AMX-BF16, ARM BF16).

    Elsewhere oneDNN/MKL emulate bf16 (on AVX2 a bf16 matmul runs ~100× slower than fp32), so autocast
    would only cost speed and precision.
    """
    flags = cpu_flags() if flags is None else flags
    if flags & {"avx512_bf16", "amx_bf16"}:
        return True
    if "bf16" in flags:  # aarch64 FEAT_BF16; only trust it where oneDNN agrees
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: the process's GPU (`cuda:local_rank` modulo the count) if CUDA is available, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        requested = f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {requested!r}")
    return device


def resolve_precision(requested: str, device: torch.device, native_bf16: bool | None = None) -> str:
    """The compute precision actually used: `fp32`, `bf16` or `fp16`.

    `auto`: fp16 autocast on CUDA (CLIP towers were trained in fp16; more mantissa than bf16), bf16 autocast
    on CPUs with native bf16, fp32 elsewhere. An explicit value is honoured as given.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and (cpu_has_native_bf16() if native_bf16 is None else native_bf16):
        return "bf16"
    return "fp32"


def resolve_batch_views(requested: int | None, image_size: int, device: torch.device,
                        free_bytes: int | None = None) -> int:
    """Views per forward. None = chosen for the device: a pixel budget on CPU (see CPU_FORWARD_PIXELS), a
    share of the free memory on CUDA."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"batch_views must be >= 1, got {requested}")
        return requested
    pixels = image_size * image_size
    if device.type == "cuda":
        if free_bytes is None:
            free_bytes = torch.cuda.mem_get_info(device)[0]
        return max(1, min(CUDA_MAX_BATCH_VIEWS, int(0.5 * free_bytes) // (pixels * CUDA_BYTES_PER_PIXEL)))
    return max(1, CPU_FORWARD_PIXELS // pixels)


def images_per_batch(batch_images: int, batch_views: int, views_per_image: int) -> int:
    """Images decoded and handed over together: at most `batch_images`, and no more than fill one forward, so
    that the views held in memory stay near `batch_views` whatever the resolution (at least one image)."""
    return max(1, min(batch_images, batch_views // views_per_image))


def forward_slices(n: int, batch_views: int) -> list[slice]:
    """Split n views into the fewest forwards of at most `batch_views`, of near-equal size (no tiny tail)."""
    if n <= 0:
        return []
    parts = math.ceil(n / batch_views)
    size = math.ceil(n / parts)
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]


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


# ------------------------------------------------------------------------------------------------ scorer

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
    size = image_size_of(model)
    device = resolve_device(job.device, workers.local_rank)
    precision = resolve_precision(job.precision, device)
    batch_views = resolve_batch_views(job.batch_views, size, device)
    batch_images = images_per_batch(job.batch_images, batch_views, 1 + n_tiles + n_crops)
    attrs = {**attrs, "cut": asdict(s), "seed": job.seed, "shard_rows": job.shard_rows,
             "n_images": n, "image_ids_sha256": ids_digest(image_ids), "device": device.type,
             "precision": precision, "batch_images": batch_images, "batch_views": batch_views}
    attrs["fingerprint"] = fingerprint(attrs)
    store_path, done_dir = work_dir / STORE_NAME, work_dir / DONE_NAME
    if workers.rank == 0:
        _prepare_store(store_path, done_dir, attrs, text_emb, job, image_ids, n_cls, dim, log)
    workers.barrier()  # the store exists for every rank
    if workers.rank != 0:
        _check_fingerprint(store_path, attrs["fingerprint"], workers.rank)
    shard_bounds = job.shards(n)
    done = _done_shards(done_dir)
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
    writer = ShardWriter({name: group[name] for name in ("global", "local", "crops", "boxes", "image_emb")},
                         done_dir)
    buffers: dict[int, dict[str, np.ndarray]] = {}
    remaining = {k: shard_bounds[k][1] - shard_bounds[k][0] for k in todo}
    bar = progress_bar(total=sum(remaining.values()), unit="img", desc="score", disable=not progress, smoothing=0.1)
    try:
        with torch.inference_mode():
            for idx, views, boxes in loader:
                b, v = views.shape[:2]
                flat = views.flatten(0, 1)
                embs = []
                for part in forward_slices(b * v, batch_views):
                    x = ((flat[part].to(device, non_blocking=True) - mean) / std).contiguous(
                        memory_format=torch.channels_last)
                    with autocast:
                        embs.append(encode_images(model, x))
                emb = torch.cat(embs) if len(embs) > 1 else embs[0]
                z = scores_to_logits(emb, text_emb, scale).view(b, v, n_cls).cpu().numpy()
                emb = emb.view(b, v, -1)[:, 0].cpu().numpy()
                k = idx[0] // job.shard_rows
                start, end = shard_bounds[k]
                buf = buffers.setdefault(k, _shard_buffers(end - start, n_tiles, n_crops, n_cls, dim))
                rows = np.asarray(idx) - start
                buf["global"][rows] = z[:, 0]
                buf["local"][rows] = z[:, 1:1 + n_tiles]
                buf["crops"][rows] = z[:, 1 + n_tiles:]
                buf["boxes"][rows] = boxes.numpy()
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
    return len(_done_shards(done_dir)) == len(shard_bounds)


def _shard_buffers(rows: int, n_tiles: int, n_crops: int, n_cls: int, dim: int) -> dict[str, np.ndarray]:
    return {
        "global": np.zeros((rows, n_cls), np.float16),
        "local": np.zeros((rows, n_tiles, n_cls), np.float16),
        "crops": np.zeros((rows, n_crops, n_cls), np.float16),
        "boxes": np.zeros((rows, n_crops, 4), np.float32),
        "image_emb": np.zeros((rows, dim), np.float16),
    }


def _prepare_store(store_path: Path, done_dir: Path, attrs: dict, text_emb: torch.Tensor, job: ScoreJob,
                   image_ids: Sequence[str], n_cls: int, dim: int, log: Callable[[str], None]) -> None:
    """Keep a partial store written with the same fingerprint, else start afresh (markers first, so that a
    crash in between never leaves old markers next to a new store)."""
    if _resume_state(store_path, done_dir, attrs["fingerprint"], log) is not None:
        return
    if done_dir.exists():
        shutil.rmtree(done_dir)
    n = len(image_ids)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    n_tiles, n_crops = job.settings.grid ** 2, job.settings.crops
    arrays = {
        "global": ((n, n_cls), "float16"),
        "local": ((n, n_tiles, n_cls), "float16"),
        "crops": ((n, n_crops, n_cls), "float16"),
        "boxes": ((n, n_crops, 4), "float32"),
        "image_emb": ((n, dim), "float16"),
    }
    group = create_score_store(store_path, arrays, job.shard_rows, job.chunk_rows, attrs, SCORE_DIMENSIONS)
    group.create_array("text_emb", shape=tuple(text_emb.shape), dtype="float32", chunks=tuple(text_emb.shape),
                       dimension_names=SCORE_DIMENSIONS["text_emb"])
    group["text_emb"][:] = text_emb.float().cpu().numpy()
    group.create_array("image_id", shape=(n,), dtype=str, chunks=(max(1, n),),
                       dimension_names=SCORE_DIMENSIONS["image_id"])
    group["image_id"][:] = np.asarray(image_ids, dtype=str)  # row i of every array is this image
    done_dir.mkdir(parents=True, exist_ok=True)


def _check_fingerprint(store_path: Path, fp: str, rank: int) -> None:
    found = zarr.open_group(str(store_path), mode="r").attrs.get("fingerprint")
    if found != fp:
        raise RuntimeError(f"rank {rank}: the score store was prepared with other settings than this rank's "
                           "(every rank must run with the same params, data and device type)")


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


def machine_summary() -> str:
    """One line naming the CPU features that decide the precision (for logs and benchmarks)."""
    flags = cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "bf16") if f in flags]
    return f"{platform.machine()} {'/'.join(isa) or 'unknown ISA'}, {torch.get_num_threads()} threads"

