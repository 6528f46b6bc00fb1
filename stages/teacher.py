"""Stage `teacher`: the frozen vision-language model → data/teacher/descriptor.json (+ toy checkpoint).

`teacher.pretrained: embedded` trains the toy teacher of the embedded benchmark; any other value is an
open_clip pretrained tag or a local weights file, resolved offline and recorded with its sha256.
"""

from __future__ import annotations

import time

from pipeline import clip
from pipeline.scenes import SceneConfig
from pipeline.storage import atomic_path, write_json
from pipeline.toy_teacher import TeacherTraining, ViewSampling, save_embedded_teacher, train_embedded_teacher
from stages.common import (
    TEACHER_DESCRIPTOR,
    TEACHER_DIR,
    Params,
    clear_work_dir,
    resolve_weights,
    work_dir,
)

CHECKPOINT_NAME = "teacher.pt"


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
    return name, pretrained, trust, (params.section("dataset").build(SceneConfig), t.build(TeacherTraining),
                                     t.build(ViewSampling))


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


def train_embedded(name: str, scenes: SceneConfig, training: TeacherTraining, sampling: ViewSampling) -> dict:
    started = time.time()
    model, top1 = train_embedded_teacher(name, scenes, training, sampling, training.scenes, work_dir("teacher"))
    print(f"teacher trained in {time.time() - started:.0f}s; held-out salient top-1 {top1:.3f}")
    with atomic_path(TEACHER_DIR) as tmp:
        tmp.mkdir()
        descriptor = save_embedded_teacher(model, name, scenes.classes, tmp / CHECKPOINT_NAME,
                                           str(TEACHER_DIR / CHECKPOINT_NAME), top1)
        write_json(tmp / TEACHER_DESCRIPTOR.name, descriptor)
    clear_work_dir("teacher")
    return descriptor
