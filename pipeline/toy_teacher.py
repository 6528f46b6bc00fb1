"""Training the toy teacher of the embedded benchmark: a small open_clip model with CLIP's iconic bias.

The teacher sees scenes captioned like web alt-text: a full scene is captioned by its salient object
only. Web photos are framed in every way, so a share of the training views are random crops captioned
by the object that dominates the crop (docs/design.md#the-embedded-benchmark: without them the teacher
is confidently wrong on the zoomed-in views the cut stage shows it). Views of pure background are never captioned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline import clip
from pipeline.clip import DEFAULT_TEMPLATES, encode_images, image_size_of, normalize_images
from pipeline.progress import progress_bar
from pipeline.resume import Checkpointer, fingerprint, numpy_rng_state, set_numpy_rng_state
from pipeline.scenes import SceneConfig, dominant_object, render_scene, scene_rng
from pipeline.settings import Settings, setting

TEACHER_STREAM = 1  # scene-generator stream of the teacher's own scenes (the dataset uses stream 0)


@dataclass
class ScenePool:
    images: np.ndarray  # uint8 [N, H, W, 3]
    object_maps: np.ndarray  # int16 [N, H, W]
    object_classes: list[list[int]]  # per scene, salient first


def make_scene_pool(n: int, cfg: SceneConfig, seed: int, stream: int = TEACHER_STREAM) -> ScenePool:
    scenes = [render_scene(scene_rng(seed, stream, i), cfg) for i in range(n)]
    return ScenePool(
        images=np.stack([s.image for s in scenes]),
        object_maps=np.stack([s.object_map for s in scenes]),
        object_classes=[s.object_classes for s in scenes],
    )


@dataclass(frozen=True)
class ViewSampling(Settings):
    """How the toy teacher's training views are drawn: section `teacher.train`."""

    crop_prob: float = setting(0.5, ge=0.0, le=1.0)  # share of views that are random crops rather than the full scene
    crop_area: tuple[float, float] = setting((0.1, 0.5), ge=0.0, le=1.0, pair=True)
    aspect: tuple[float, float] = setting((3 / 4, 4 / 3), gt=0.0, pair=True)
    min_fraction: float = setting(0.15)  # the dominant object must cover this much of the crop (> 1: never)
    flip: bool = setting(True)

    SECTION: ClassVar[str] = "teacher.train"


def sample_crop_box(rng: np.random.Generator, size: int, area: tuple[float, float],
                    aspect: tuple[float, float]) -> tuple[int, int, int, int]:
    """A random box (x0, y0, x1, y1) in pixels covering `area` of a size×size image."""
    a = rng.uniform(*area) * size * size
    r = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    w = int(round(min(size, max(2, math.sqrt(a * r)))))
    h = int(round(min(size, max(2, math.sqrt(a / r)))))
    x0 = int(rng.integers(0, size - w + 1))
    y0 = int(rng.integers(0, size - h + 1))
    return x0, y0, x0 + w, y0 + h


def sample_views(rng: np.random.Generator, pool: ScenePool, batch: int, out_size: int,
                 sampling: ViewSampling) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of captioned training views: uint8 [B, 3, S, S] and the captioned class [B]."""
    from torchvision.transforms.v2 import functional as TF  # on use: torchvision imports torch._dynamo (~1 s)

    size = pool.images.shape[1]
    views, labels = [], []
    misses = 0
    while len(views) < batch:
        i = int(rng.integers(len(pool.images)))
        img = torch.from_numpy(pool.images[i]).permute(2, 0, 1)
        # After many background-only crops in a row, fall back to a full view rather than loop forever.
        if misses < 100 and rng.random() < sampling.crop_prob:
            box = sample_crop_box(rng, size, sampling.crop_area, sampling.aspect)
            obj = dominant_object(pool.object_maps[i], box, sampling.min_fraction)
            if obj < 0:
                misses += 1
                continue  # background only: no caption would name it
            misses = 0
            x0, y0, x1, y1 = box
            view = TF.resized_crop(img, y0, x0, y1 - y0, x1 - x0, [out_size, out_size], antialias=True)
            cls = pool.object_classes[i][obj]
        else:
            view = TF.resize(img, [out_size, out_size], antialias=True) if size != out_size else img
            cls = pool.object_classes[i][0]
        if sampling.flip and rng.random() < 0.5:
            view = view.flip(-1)
        views.append(view)
        labels.append(cls)
    return torch.stack(views), torch.tensor(labels)


def multi_positive_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_ids: torch.Tensor,
                                    logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss in which all pairs with the same caption are positives of each other.

    With only C distinct captions a batch holds many duplicates; the plain CLIP loss would treat them
    as negatives and barely learn. Targets spread uniformly over the positives of each row/column.
    """
    logits = logit_scale * image_emb @ text_emb.T
    positives = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = positives / positives.sum(1, keepdim=True)
    loss_i = -(targets * logits.log_softmax(dim=1)).sum(1).mean()
    loss_t = -(targets * logits.log_softmax(dim=0)).sum(0).mean()
    return (loss_i + loss_t) / 2


@dataclass(frozen=True)
class TeacherTraining(Settings):
    """The toy teacher's optimisation: section `teacher.train`."""

    steps: int = setting(600, ge=1)
    scenes: int = setting(4000, ge=1)  # its own scenes, never the dataset's
    batch_size: int = setting(128, ge=2)
    lr: float = setting(2e-3, ge=0.0)
    weight_decay: float = setting(0.05, ge=0.0)
    warmup: int = setting(50, ge=1)  # steps of linear warm-up
    seed: int = setting(0)

    SECTION: ClassVar[str] = "teacher.train"


def train_toy_teacher(model: torch.nn.Module, tokenizer, classes: Sequence[str], pool: ScenePool,
                      training: TeacherTraining, sampling: ViewSampling,
                      templates: Sequence[str] = DEFAULT_TEMPLATES,
                      on_step: Callable[[int, float], None] | None = None,
                      checkpointer: Checkpointer | None = None) -> torch.nn.Module:
    """Train `model` in place contrastively on captioned views of `pool`; returns it in eval mode.

    With a `checkpointer`, the state is saved every `checkpointer.every` steps and a rerun resumes from it.
    """
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(np.random.SeedSequence([training.seed, 17]))
    out_size = image_size_of(model)
    # Every caption (class × template) is tokenised once; a step picks one template per view.
    prompt_tokens = tokenizer([t.format(c) for c in classes for t in templates])
    n_t = len(templates)
    opt = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / training.warmup) * 0.5
                                              * (1 + math.cos(math.pi * min(s, training.steps) / training.steps)))
    model.train()
    model.to(memory_format=torch.channels_last)  # ~2x faster convolutions on CPU
    start = 0
    state = checkpointer.restore() if checkpointer is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_numpy_rng_state(rng, state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        start = state["position"]
    for step in range(start, training.steps):
        views, cls = sample_views(rng, pool, training.batch_size, out_size, sampling)
        tmpl = torch.from_numpy(rng.integers(0, n_t, size=len(cls)))
        image_emb = encode_images(model, normalize_images(views, model).contiguous(memory_format=torch.channels_last))
        text_emb = F.normalize(model.encode_text(prompt_tokens[cls * n_t + tmpl]).float(), dim=-1)
        loss = multi_positive_contrastive_loss(image_emb, text_emb, cls, model.logit_scale.exp().clamp(max=100))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step, loss.item())
        if checkpointer is not None and checkpointer.due(step) and step + 1 < training.steps:
            checkpointer.save({"position": step + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "numpy_rng": numpy_rng_state(rng),
                               "torch_rng": torch.get_rng_state()})
    return model.eval()


HELDOUT_STREAM = 2  # scenes for the teacher's own sanity check, distinct from training and dataset
CHECKPOINT_EVERY = 25  # steps between resumable checkpoints (~8 s of training; a save takes ~0.1 s)


def train_embedded_teacher(name: str, scenes: SceneConfig, training: TeacherTraining, sampling: ViewSampling,
                           n_scenes: int, work_dir: str | Path) -> tuple[torch.nn.Module, float]:
    """A fresh open_clip model `name` trained on `n_scenes` of its own scenes, with progress and resumable
    checkpoints in `work_dir`. Returns (the model, its held-out salient top-1)."""
    seed = training.seed
    torch.manual_seed(seed)  # initial weights depend on the seed only
    model = clip.create_model(name)
    if clip.image_size_of(model) != scenes.image_size:
        raise ValueError(f"teacher.model {name} expects {clip.image_size_of(model)} px images but "
                         f"dataset.image_size is {scenes.image_size}")
    tokenizer = clip.tokenizer_for(name)
    pool = make_scene_pool(n_scenes, scenes, seed)
    bar = progress_bar(total=training.steps, desc="teacher", unit="step")

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    run_id = fingerprint(name, asdict(scenes), asdict(training), asdict(sampling), n_scenes)
    checkpointer = Checkpointer(work_dir, run_id, every=CHECKPOINT_EVERY, log=tqdm.write)
    train_toy_teacher(model, tokenizer, scenes.classes, pool, training, sampling, on_step=on_step,
                      checkpointer=checkpointer)
    bar.close()
    return model, heldout_salient_top1(model, tokenizer, scenes, seed)


def save_embedded_teacher(model: torch.nn.Module, name: str, classes: Sequence[str], path: Path,
                          recorded_path: str, top1: float) -> dict:
    """Write the weights to `path`; return the teacher's descriptor (pipeline.clip.load_described), which
    names the weights by `recorded_path`, where they will be once the output is in place."""
    torch.save({"state_dict": model.state_dict(), "model": name, "classes": list(classes)}, path)
    return {"model": name, "pretrained": "embedded", "weights": recorded_path, "found_in": "trained",
            "sha256": clip.sha256_of(path), "trust_checkpoint": False, "classes": list(classes),
            "heldout_salient_top1": top1}


def heldout_salient_top1(model, tokenizer, scenes: SceneConfig, seed: int, n: int = 256) -> float:
    """Share of n held-out scenes whose top zero-shot class is their salient object."""
    pool = make_scene_pool(n, scenes, seed, stream=HELDOUT_STREAM)
    with torch.inference_mode():
        text = clip.encode_classes(model, tokenizer, scenes.classes)
        x = clip.normalize_images(torch.from_numpy(pool.images).permute(0, 3, 1, 2), model)
        z = clip.scores_to_logits(clip.encode_images(model, x), text, clip.logit_scale_of(model))
    salient = np.array([c[0] for c in pool.object_classes])
    return float((z.argmax(1).numpy() == salient).mean())
