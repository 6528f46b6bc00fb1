"""Stage `score` (cut): every image's global view, K tiles and M random crops → data/scores.zarr.

Resumable: shards are written whole into data/.scores.work and marked done; a rerun after a kill
continues there. Only a complete store is moved into place as data/scores.zarr.
"""

from __future__ import annotations

import shutil

from pipeline import clip
from pipeline.cut import CutSettings
from pipeline.scoring import STORE_NAME, ScoreJob, score_to_store
from pipeline.storage import Table, manifest_paths, replace_path
from stages.common import MANIFEST, SCORES, SCORES_WORK, TEACHER_DESCRIPTOR, Params, ParamsError, read_json


def cut_settings(p: Params) -> CutSettings:
    return CutSettings(grid=p.get("grid", int, lo=1), crops=p.get("crops", int, lo=0),
                       crop_area=p.pair("crop_area", 0.0, 1.0), crop_aspect=p.pair("crop_aspect", 0.01),
                       flip=p.get("flip", bool))


def check(params: Params) -> tuple[ScoreJob, list[str]]:
    p = params.section("score")
    job = ScoreJob(settings=cut_settings(p), seed=p.get("seed", int), shard_rows=p.get("shard_rows", int, lo=1),
                   chunk_rows=p.get("chunk_rows", int, lo=1), batch_images=p.get("batch_images", int, lo=1),
                   num_workers=p.get("num_workers", int, lo=0))
    templates = p.get("templates", list)
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise ParamsError("params.yaml: 'score.templates' must be a non-empty list of strings containing '{}'")
    return job, templates


def run(params: Params, max_shards: int | None = None) -> None:
    job, templates = check(params)
    manifest = Table(MANIFEST)
    paths = list(manifest_paths(manifest))
    descriptor = read_json(TEACHER_DESCRIPTOR)
    model = clip.load_described(descriptor)
    tokenizer = clip.tokenizer_for(descriptor["model"])
    text_emb = clip.encode_classes(model, tokenizer, manifest.classes, templates)
    attrs = {"model": descriptor["model"], "pretrained": descriptor["pretrained"], "weights_sha256":
             descriptor["sha256"], "classes": manifest.classes, "templates": templates,
             "logit_scale": clip.logit_scale_of(model), "image_size": clip.image_size_of(model),
             "score": "logit(softmax(logit_scale * cos))"}
    complete = score_to_store(model, text_emb, paths, list(manifest.column("image_id")), job, SCORES_WORK,
                              attrs, max_shards=max_shards)
    if not complete:
        print(f"stopped after {max_shards} shard(s); rerun `mlpl score` to continue from {SCORES_WORK}")
        return
    replace_path(SCORES_WORK / STORE_NAME, SCORES)
    shutil.rmtree(SCORES_WORK)
    print(f"scored {len(paths)} images × {1 + job.settings.grid ** 2 + job.settings.crops} views → {SCORES}")
