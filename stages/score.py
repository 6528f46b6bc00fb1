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
from pipeline.scoring import STORE_NAME, ScoreJob, score_to_store, torchrun_workers
from pipeline.storage import Table, manifest_paths, read_json, replace_path
from stages.common import MANIFEST, SCORES, SCORES_WORK, TEACHER_DESCRIPTOR, Params


def score_job(p: Params) -> ScoreJob:
    """The `score` section as a ScoreJob (its views: CutSettings); an absent key takes its default (auto for
    precision, device, batch_views)."""
    return p.build(ScoreJob)


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
