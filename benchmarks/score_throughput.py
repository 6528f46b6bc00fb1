"""Scoring throughput: images/s and views/s of the cut stage on generated scenes (prints figures).

    python benchmarks/score_throughput.py [--images 256] [--model mlpl-toy-rn] [--batch-images 16]

Uses a randomly initialised model: throughput does not depend on the weights.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from pipeline import clip
from pipeline.cut import CutSettings
from pipeline.scenes import SceneConfig, render_scene, scene_rng
from pipeline.scoring import ScoreJob, score_to_store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--model", default="mlpl-toy-rn")
    ap.add_argument("--batch-images", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    model = clip.create_model(args.model)
    size = clip.image_size_of(model)
    tmp = Path(tempfile.mkdtemp())
    try:
        paths = []
        for i in range(args.images):
            p = tmp / f"{i}.png"
            Image.fromarray(render_scene(scene_rng(0, 9, i), SceneConfig(image_size=size)).image).save(p)
            paths.append(p)
        text = clip.encode_classes(model, clip.tokenizer_for(args.model), list(SceneConfig().classes))
        settings = CutSettings()
        job = ScoreJob(settings, batch_images=args.batch_images, num_workers=args.workers)
        start = time.perf_counter()
        score_to_store(model, text, paths, [p.stem for p in paths], job, tmp / "work", {}, progress=False)
        elapsed = time.perf_counter() - start
        views = args.images * (1 + settings.grid ** 2 + settings.crops)
        print(f"{args.model}: {args.images} images, {views} views in {elapsed:.1f}s → "
              f"{args.images / elapsed:.1f} images/s, {views / elapsed:.0f} views/s "
              f"({torch.get_num_threads()} threads, {args.workers} workers)")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
