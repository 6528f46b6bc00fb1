"""Stage `score` (cut): every image's global view, K tiles and M random crops → data/scores.zarr.

Resumable: shards are written whole into data/.scores.work and marked done; a rerun after a kill
continues there. Only a complete store is moved into place as data/scores.zarr.

Under torchrun (WORLD_SIZE > 1) every process scores its own shards of the same work directory, which
must be on a filesystem all of them see; rank 0 creates the store and moves the finished one into place:

    torchrun --standalone --nproc_per_node=2 -m stages.score [--params params.yaml]

(see docs/scaling.md for GPU nodes and Slurm).
"""

from __future__ import annotations

import shutil
import sys

from pipeline import clip
from pipeline.cut import CROP_PLACEMENTS, CutSettings
from pipeline.scoring import PRECISIONS, STORE_NAME, ScoreJob, score_to_store, torchrun_workers
from pipeline.storage import Table, manifest_paths, read_json, replace_path
from stages.common import MANIFEST, SCORES, SCORES_WORK, TEACHER_DESCRIPTOR, Params


def cut_settings(p: Params) -> CutSettings:
    return CutSettings(grid=p.get("grid", int, lo=1), crops=p.get("crops", int, lo=0),
                       crop_area=p.pair("crop_area", 0.0, 1.0), crop_aspect=p.pair("crop_aspect", 0.01),
                       flip=p.get("flip", bool),
                       placement=p.get("crop_placement", str, default="centre", choices=CROP_PLACEMENTS))


def score_job(p: Params) -> ScoreJob:
    """The `score` section as a ScoreJob; keys added later (precision, device, batch_views) default to auto."""
    batch_views = p.get("batch_views", (str, int), default="auto")
    if batch_views != "auto" and (isinstance(batch_views, str) or isinstance(batch_views, bool) or batch_views < 1):
        batch_views = p.fail("batch_views", f"must be auto or an int >= 1, got {batch_views!r}", "auto")
    device = p.get("device", str, default="auto")
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        device = p.fail("device", f"must be auto, cpu, cuda or cuda:N, got {device!r}", "auto")
    return ScoreJob(settings=cut_settings(p), seed=p.get("seed", int), shard_rows=p.get("shard_rows", int, lo=1),
                    chunk_rows=p.get("chunk_rows", int, lo=1), batch_images=p.get("batch_images", int, lo=1),
                    num_workers=p.get("num_workers", int, lo=0),
                    batch_views=None if batch_views == "auto" else batch_views,
                    precision=p.get("precision", str, default="auto", choices=PRECISIONS), device=device)


def check(params: Params) -> tuple[ScoreJob, list[str]]:
    p = params.section("score")
    job = score_job(p)
    templates = p.get("templates", list)
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        templates = p.fail("templates", f"must be a non-empty list of strings containing '{{}}', got {templates!r}",
                           ["{}"])
    return job, templates


def run(params: Params, max_shards: int | None = None) -> None:
    job, templates = check(params)
    manifest = Table(MANIFEST)
    paths = list(manifest_paths(manifest))
    descriptor = read_json(TEACHER_DESCRIPTOR)
    model = clip.load_described(descriptor)
    tokenizer = clip.tokenizer_for(descriptor["model"])
    text_emb = clip.encode_classes(model, tokenizer, manifest.classes, templates)  # once, before any image
    attrs = {"model": descriptor["model"], "pretrained": descriptor["pretrained"], "weights_sha256":
             descriptor["sha256"], "classes": manifest.classes, "templates": templates,
             "logit_scale": clip.logit_scale_of(model), "image_size": clip.image_size_of(model),
             "score": "logit(softmax(logit_scale * cos))"}
    with torchrun_workers() as workers:
        complete = score_to_store(model, text_emb, paths, list(manifest.column("image_id")), job, SCORES_WORK,
                                  attrs, max_shards=max_shards, progress=workers.rank == 0, workers=workers)
        if workers.rank != 0:
            return
        if not complete:
            print(f"stopped after {max_shards} shard(s) per process; rerun `mlpl score` to continue from "
                  f"{SCORES_WORK}")
            return
        replace_path(SCORES_WORK / STORE_NAME, SCORES)
        shutil.rmtree(SCORES_WORK)
        by = f" by {workers.world} processes" if workers.world > 1 else ""
        print(f"scored {len(paths)} images × {1 + job.settings.grid ** 2 + job.settings.crops} views{by} → {SCORES}")


if __name__ == "__main__":  # `python -m stages.score`, the entry point for torchrun: same options as `mlpl score`
    from stages.cli import app

    app(["score", *sys.argv[1:]], prog_name="mlpl")
