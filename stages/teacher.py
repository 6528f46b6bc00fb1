"""Stage `teacher`: the frozen vision-language model → data/teacher/descriptor.json (+ toy checkpoint).

`teacher.pretrained: embedded` trains the toy teacher of the embedded benchmark; any other value is an
open_clip pretrained tag or a local weights file, resolved offline and recorded with its sha256.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from pipeline import clip
from pipeline.progress import progress_bar
from pipeline.resume import Checkpointer, fingerprint
from pipeline.scenes import SceneConfig
from pipeline.storage import atomic_path
from pipeline.toy_teacher import TeacherTraining, ViewSampling, make_scene_pool, train_toy_teacher
from stages.common import (
    TEACHER_DESCRIPTOR,
    TEACHER_DIR,
    Params,
    clear_work_dir,
    resolve_weights,
    scene_config,
    work_dir,
    write_json,
)

CHECKPOINT_NAME = "teacher.pt"
CHECKPOINT_EVERY = 25  # steps between resumable checkpoints (~8 s of training; a save takes ~0.1 s)
HELDOUT_STREAM = 2  # scenes for the teacher's own sanity check, distinct from training and dataset


def check(params: Params) -> tuple[str, str, bool, tuple | None]:
    """(model, pretrained, trust_checkpoint, toy-teacher settings or None). Weights are resolved by `run`."""
    p = params.section("teacher")
    name, pretrained = p.model_name("model"), p.get("pretrained", str)
    trust = p.get("trust_checkpoint", bool, default=False)
    if pretrained != "embedded":
        resolve_weights(p, name, pretrained)
        p.allow("train")  # the toy teacher's settings, unused by real weights
        return name, pretrained, trust, None
    t = p.section("train")
    seed = t.get("seed", int)
    training = TeacherTraining(steps=t.get("steps", int, lo=1), batch_size=t.get("batch_size", int, lo=2),
                               lr=t.get("lr", float, lo=0.0), seed=seed)
    sampling = ViewSampling(crop_prob=t.get("crop_prob", float, lo=0.0, hi=1.0),
                            crop_area=t.pair("crop_area", 0.0, 1.0))
    return name, pretrained, trust, (scene_config(params.section("dataset")), training, sampling,
                                     t.get("scenes", int, lo=1))


def run(params: Params) -> None:
    name, pretrained, trust, embedded = check(params)
    if embedded is not None:
        descriptor = train_embedded(name, *embedded)
    else:
        descriptor = clip.describe(name, pretrained, trust)
        with atomic_path(TEACHER_DIR) as tmp:
            tmp.mkdir()
            write_json(tmp / TEACHER_DESCRIPTOR.name, descriptor)
    print(f"teacher: {descriptor['model']} ({descriptor['pretrained']}), sha256 {descriptor['sha256'][:12]}…")


def train_embedded(name: str, scenes: SceneConfig, training: TeacherTraining, sampling: ViewSampling,
                   n_scenes: int) -> dict:
    seed = training.seed
    torch.manual_seed(seed)  # initial weights depend on the seed only
    model = clip.create_model(name)
    if clip.image_size_of(model) != scenes.image_size:
        raise ValueError(f"teacher.model {name} expects {clip.image_size_of(model)} px images but "
                         f"dataset.image_size is {scenes.image_size}")
    tokenizer = clip.tokenizer_for(name)
    pool = make_scene_pool(n_scenes, scenes, seed)
    bar = progress_bar(total=training.steps, desc="teacher", unit="step")
    started = time.time()

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    run_id = fingerprint(name, asdict(scenes), asdict(training), asdict(sampling), n_scenes)
    checkpointer = Checkpointer(work_dir("teacher"), run_id, every=CHECKPOINT_EVERY, log=tqdm.write)
    train_toy_teacher(model, tokenizer, scenes.classes, pool, training, sampling, on_step=on_step,
                      checkpointer=checkpointer)
    bar.close()
    top1 = heldout_salient_top1(model, tokenizer, scenes, seed)
    print(f"teacher trained in {time.time() - started:.0f}s; held-out salient top-1 {top1:.3f}")
    with atomic_path(TEACHER_DIR) as tmp:
        tmp.mkdir()
        ckpt = tmp / CHECKPOINT_NAME
        torch.save({"state_dict": model.state_dict(), "model": name, "classes": list(scenes.classes)}, ckpt)
        descriptor = {"model": name, "pretrained": "embedded", "weights": str(TEACHER_DIR / CHECKPOINT_NAME),
                      "found_in": "trained", "sha256": clip.sha256_of(ckpt), "trust_checkpoint": False,
                      "classes": list(scenes.classes), "heldout_salient_top1": top1}
        write_json(tmp / TEACHER_DESCRIPTOR.name, descriptor)
    clear_work_dir("teacher")
    return descriptor


def heldout_salient_top1(model, tokenizer, scenes: SceneConfig, seed: int, n: int = 256) -> float:
    pool = make_scene_pool(n, scenes, seed, stream=HELDOUT_STREAM)
    with torch.inference_mode():
        text = clip.encode_classes(model, tokenizer, scenes.classes)
        x = clip.normalize_images(torch.from_numpy(pool.images).permute(0, 3, 1, 2), model)
        z = clip.scores_to_logits(clip.encode_images(model, x), text, clip.logit_scale_of(model))
    salient = np.array([c[0] for c in pool.object_classes])
    return float((z.argmax(1).numpy() == salient).mean())

