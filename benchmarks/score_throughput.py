"""Scoring throughput: the authors' per-view loop vs our scorer, on the same model and images.

    python benchmarks/score_throughput.py [--model RN50] [--images 8] [--quick]

Prints, for an open_clip architecture at its native resolution (RN50 / ViT-B-32: 224 px) with random
weights (speed does not depend on them):
  (a) views/s of a per-view loop shaped like the authors' code: PIL crop of the box → open_clip's
      preprocess (bicubic resize, center crop, ToTensor, normalize) → encode_image on a batch of one,
      fp32 under torch.no_grad;
  (b) views/s of `pipeline.scoring.score_to_store` end to end (decode, cut, forward, Zarr write) on 4N images,
      and the ratio (b)/(a);
  the model's GFLOPs per view (FLOPs = 2 × multiply-adds, counted by torch.utils.flop_counter), the GFLOP/s
  the scorer achieves and its fraction of this machine's measured fp32 and bf16 GEMM peaks (square
  torch.matmul and the same GEMM through oneDNN; the best of all is the headline), and the scorer's peak RSS
  at N and 4N images (separate processes).
Ends with one JSON line: speedup, peak_fraction, rss_ratio, views_per_s and the details.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline import clip
from pipeline.cut import CutSettings, view_boxes
from pipeline.scenes import SceneConfig, render_scene, scene_rng
from pipeline.scoring import (
    ScoreJob,
    image_seed,
    images_per_batch,
    machine_summary,
    resolve_batch_views,
    resolve_device,
    resolve_precision,
    score_to_store,
)

CLASSES = list(SceneConfig().classes)
TEMPLATES = list(clip.DEFAULT_TEMPLATES)


def make_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the same random weights in every process
    return clip.create_model(name)


def gflop_per_view(model: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.encode_image(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def _best_rate(flop: float, fn, args: tuple, reps: int) -> tuple[float, float]:
    fn(*args)  # warm-up: kernel selection, page faults
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return flop / min(times) / 1e9, min(times)


def matmul_peak(dtype: torch.dtype, max_n: int = 4096, budget_s: float = 1.5, reps: int = 3) -> dict[str, float]:
    """Best GFLOP/s of two GEMM paths in `dtype`: square torch.matmul (MKL) and a 1×1 convolution in channels-last
    (oneDNN, the library our convolutions run on; on AMD CPUs it beats MKL). The size doubles from 256 while one
    product takes less than budget_s / reps, so an emulated dtype still finishes quickly; best of `reps`."""
    rates = {"matmul": 0.0, "onednn_gemm": 0.0}
    n = 256
    while n <= max_n:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        rate, secs = _best_rate(2 * n ** 3, torch.matmul, (a, b), reps)
        rates["matmul"] = max(rates["matmul"], rate)
        # the same GEMM as a 1×1 convolution: M = n pixels (n/16 × 16), K = N = n channels
        x = torch.randn(1, n, n // 16, 16).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(n, n, 1, 1).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            rate2, secs2 = _best_rate(2 * n ** 3, torch.nn.functional.conv2d, (x, w), reps)
        rates["onednn_gemm"] = max(rates["onednn_gemm"], rate2)
        if max(secs, secs2) > budget_s / reps:
            break
        n *= 2
    return rates

def write_images(folder: Path, n: int, side: int) -> list[Path]:
    """Generated multi-object scenes, larger than the model input (views are resized, as for photos)."""
    paths = []
    for i in range(n):
        p = folder / f"img{i:05d}.png"
        Image.fromarray(render_scene(scene_rng(0, 9, i), SceneConfig(image_size=side)).image).save(p)
        paths.append(p)
    return paths


def reference_loop(model: torch.nn.Module, text_emb: torch.Tensor, paths: list[Path], settings: CutSettings,
                   seed: int) -> tuple[int, float, np.ndarray]:
    """The authors' style: open the image, then for each view crop with PIL, preprocess, forward one view."""
    import open_clip

    size = clip.image_size_of(model)
    preprocess = open_clip.image_transform(size, is_train=False)  # Resize(bicubic)+CenterCrop+ToTensor+Normalize
    scale = clip.logit_scale_of(model)
    out, n_views = [], 0
    start = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            img = Image.open(path).convert("RGB")
            w, h = img.size
            boxes, flips = view_boxes(np.random.default_rng(image_seed(seed, path.stem)), settings)
            for (x0, y0, x1, y1), flip in zip(boxes, flips, strict=True):
                crop = img.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))
                if flip:
                    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                feat = model.encode_image(preprocess(crop).unsqueeze(0))
                feat = feat / feat.norm(dim=-1, keepdim=True)
                probs = (scale * feat @ text_emb.T).softmax(dim=-1)
                out.append(probs.numpy())
                n_views += 1
    return n_views, time.perf_counter() - start, np.concatenate(out)


def child(args: argparse.Namespace) -> None:
    """One scorer run in its own process, so that ru_maxrss is this run's peak."""
    torch.set_num_threads(args.threads)
    model = make_model(args.model)
    text = clip.encode_classes(model, clip.tokenizer_for(args.model), CLASSES, TEMPLATES)
    paths = sorted(Path(args.image_dir).glob("*.png"))[: args.images]
    job = ScoreJob(CutSettings(), batch_images=args.batch_images, num_workers=args.workers,
                   batch_views=args.batch_views, precision=args.precision)
    start = time.perf_counter()
    assert score_to_store(model, text, paths, [p.stem for p in paths], job, Path(args.work), {}, progress=False,
                          log=lambda m: None)
    elapsed = time.perf_counter() - start
    views = len(paths) * (1 + job.settings.grid ** 2 + job.settings.crops)
    print(json.dumps({"views": views, "seconds": elapsed,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def run_child(args: argparse.Namespace, images: int, image_dir: Path, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--images", str(images),
           "--image-dir", str(image_dir), "--work", str(work), "--batch-images", str(args.batch_images),
           "--workers", str(args.workers), "--precision", args.precision, "--threads", str(args.threads)]
    if args.batch_views is not None:
        cmd += ["--batch-views", str(args.batch_views)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"scorer run failed:\n{r.stderr}")
    shutil.rmtree(work, ignore_errors=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="RN50", help="open_clip architecture (random weights)")
    ap.add_argument("--images", type=int, default=8, help="N: the scorer runs on N and 4N images")
    ap.add_argument("--ref-images", type=int, default=2, help="images through the per-view loop "
                    f"({1 + CutSettings().grid ** 2 + CutSettings().crops} views each)")
    ap.add_argument("--image-side", type=int, default=320, help="side of the generated images in pixels")
    ap.add_argument("--batch-images", type=int, default=16)
    ap.add_argument("--batch-views", type=int, default=None, help="views per forward (default: auto)")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader decode workers of the scorer")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="N=4, one reference image: about a minute on 2 cores")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--image-dir", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.images, args.ref_images = 4, 1
    torch.set_num_threads(args.threads)

    model = make_model(args.model)
    size = clip.image_size_of(model)
    device = resolve_device("auto")
    precision = resolve_precision(args.precision, device)
    batch_views = resolve_batch_views(args.batch_views, size, device)
    per_image = 1 + CutSettings().grid ** 2 + CutSettings().crops
    print(f"machine: {machine_summary()}; scorer: {device.type}, {precision}, forwards of ≤ {batch_views} views, "
          f"{images_per_batch(args.batch_images, batch_views, per_image)} image(s) × {per_image} views per batch, "
          f"{args.workers} decode worker(s)")

    rates32, rates16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    peak32, peak16 = max(rates32.values()), max(rates16.values())
    best_dtype, best_peak = ("fp32", peak32) if peak32 >= peak16 else ("bf16", peak16)
    print("measured GEMM peak, GFLOP/s (torch.matmul / oneDNN 1×1 conv): "
          f"fp32 {rates32['matmul']:.1f} / {rates32['onednn_gemm']:.1f}, "
          f"bf16 {rates16['matmul']:.1f} / {rates16['onednn_gemm']:.1f}")

    gflop = gflop_per_view(model, size)
    print(f"{args.model} at {size} px: {gflop:.2f} GFLOP per view (2 × multiply-adds)")

    tmp = Path(tempfile.mkdtemp(prefix="mlpl-bench-"))
    try:
        paths = write_images(tmp, 4 * args.images, args.image_side)
        text = clip.encode_classes(model, clip.tokenizer_for(args.model), CLASSES, TEMPLATES)
        ref_views, ref_s, _ = reference_loop(model, text, paths[: args.ref_images], CutSettings(), seed=0)
        ref_rate = ref_views / ref_s
        print(f"(a) per-view loop: {ref_views} views in {ref_s:.1f}s → {ref_rate:.2f} views/s "
              f"({ref_rate * gflop:.1f} GFLOP/s)")
        del model
        small = run_child(args, args.images, tmp, tmp / "work-n")
        large = run_child(args, 4 * args.images, tmp, tmp / "work-4n")
    finally:
        shutil.rmtree(tmp)

    rate = large["views"] / large["seconds"]
    achieved = rate * gflop
    speedup = rate / ref_rate
    rss_ratio = large["maxrss_mb"] / small["maxrss_mb"]
    print(f"(b) our scorer: {large['views']} views in {large['seconds']:.1f}s → {rate:.2f} views/s "
          f"({achieved:.1f} GFLOP/s); {small['views'] / small['seconds']:.2f} views/s on N")
    print(f"speedup (b)/(a): {speedup:.2f}×")
    print(f"fraction of the measured matmul peak: {achieved / best_peak:.1%} of {best_dtype} (the best); "
          f"{achieved / peak32:.1%} of fp32, {achieved / peak16:.1%} of bf16")
    print(f"peak RSS: {small['maxrss_mb']:.0f} MB at N={args.images}, {large['maxrss_mb']:.0f} MB at "
          f"4N={4 * args.images} (ratio {rss_ratio:.3f}); decode workers peak {large['children_maxrss_mb']:.0f} MB")
    print(json.dumps({
        "speedup": round(speedup, 3), "peak_fraction": round(achieved / best_peak, 3), "rss_ratio": round(rss_ratio, 3),
        "views_per_s": round(rate, 3), "reference_views_per_s": round(ref_rate, 3), "model": args.model,
        "image_size": size, "gflop_per_view": round(gflop, 3), "achieved_gflop_per_s": round(achieved, 1),
        "peak_dtype": best_dtype, "peak_gflop_per_s_fp32": round(peak32, 1), "peak_gflop_per_s_bf16": round(peak16, 1),
        "matmul_gflop_per_s_fp32": round(rates32["matmul"], 1), "matmul_gflop_per_s_bf16": round(rates16["matmul"], 1),
        "peak_fraction_fp32": round(achieved / peak32, 3), "peak_fraction_bf16": round(achieved / peak16, 3),
        "precision": precision, "batch_views": batch_views, "threads": args.threads, "n_images": args.images,
        "rss_mb_n": round(small["maxrss_mb"], 1), "rss_mb_4n": round(large["maxrss_mb"], 1)}))


if __name__ == "__main__":
    main()
