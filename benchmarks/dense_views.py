"""Dense against per-view scoring (`score.views`): tower FLOPs, forwards and wall time per image, and what the
initial estimators are worth under each, on the project's own data.

    python benchmarks/dense_views.py [--sizes auto 192] [--params params.yaml]

Run in a project after `dvc repro` (it reads data/prepared/manifest.parquet and the teacher in data/teacher).
Scores every image of the manifest once per mode into a temporary store with the `score` section of the
params file (only `views` and `dense_size` changed), builds the `init` estimators (z⁰, eq. 7 over tiles,
crops and both, CDUL) with the `init` section, and reports their train label mAP. Tower FLOPs are
counted by torch.utils.flop_counter (2 × multiply-adds) on the forwards of one batch of `score.batch_images`
images, per image, for the project's teacher, and on batches of 2 for CLIP's RN50 and ViT-B-32 at 224 px
(`--reference`). Ends with one JSON line: flops_ratio (crops /
dense, auto size), per mode forwards, GFLOPs, milliseconds per image and label mAPs, and the references.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import clip  # noqa: E402
from pipeline.cut import InitSettings, cdul_aggregate, fuse_crops  # noqa: E402
from pipeline.metrics import mean_ap  # noqa: E402
from pipeline.scoring import STORE_NAME, score_to_store  # noqa: E402
from pipeline.scoring.dense import dense_size_for, pooled_embeddings  # noqa: E402
from pipeline.storage import Table, manifest_paths, open_store, read_json  # noqa: E402
from stages.common import MANIFEST, TEACHER_DESCRIPTOR, Params  # noqa: E402
from stages.score import check as score_check  # noqa: E402


def tower_gflops(model: torch.nn.Module, settings, batch_images: int) -> float:
    """GFLOPs per image of the tower forwards that score a batch of `batch_images` images in this mode, as the
    scorer batches them (RoIAlign's interpolation not counted)."""
    views = 1 + settings.grid ** 2 + settings.crops
    native = clip.image_size_of(model)
    b = batch_images
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        if settings.views == "dense":
            size = dense_size_for(model, settings.dense_size)
            boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]] * views] * b)
            pooled_embeddings(model.visual, torch.zeros(b, 3, size, size), boxes)
        else:
            model.visual(torch.zeros(b * views, 3, native, native))
    return counter.get_total_flops() / 1e9 / b


def estimators_map(store_path: Path, truth: np.ndarray, train: np.ndarray, init: InitSettings) -> dict[str, float]:
    store = open_store(store_path)
    z0 = np.asarray(store["global"][:], np.float32)
    tiles = np.asarray(store["local"][:], np.float32)
    crops = np.asarray(store["crops"][:], np.float32)
    local = np.concatenate([tiles, crops], axis=1) if init.views == "all" else crops
    labels = {"z0": z0, "tiles": fuse_crops(z0, tiles, init.alpha), "crops": fuse_crops(z0, crops, init.alpha),
              "cdul": cdul_aggregate(z0, tiles, init.cdul_zeta), "cut": fuse_crops(z0, local, init.alpha)}
    return {name: round(mean_ap(truth[train], z[train]), 4) for name, z in labels.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--sizes", nargs="+", default=["auto"], help="dense input sides to measure (auto = 2 × native)")
    ap.add_argument("--reference", nargs="*", default=["RN50", "ViT-B-32"],
                    help="open_clip architectures whose FLOPs per image to count too (random weights, no download)")
    args = ap.parse_args()
    params = Params.load(args.params)
    job, templates = score_check(params)
    init = params.section("init").build(InitSettings)
    manifest = Table(MANIFEST)
    paths, ids = list(manifest_paths(manifest)), list(manifest.column("image_id"))
    truth, train = manifest.column("labels"), manifest.column("split") == "train"
    descriptor = read_json(TEACHER_DESCRIPTOR)
    model = clip.load_described(descriptor).eval()
    text_emb = clip.encode_classes(model, clip.tokenizer_for(descriptor["model"]), manifest.classes, templates)
    modes = {"crops": replace(job.settings, views="crops")}
    for size in args.sizes:
        dense_size = None if size == "auto" else int(size)
        modes[f"dense_{dense_size_for(model, dense_size)}"] = replace(job.settings, views="dense",
                                                                       dense_size=dense_size)
    results = {}
    for name, settings in modes.items():
        work = Path(tempfile.mkdtemp(prefix="mlpl-dense-"))
        try:
            start = time.perf_counter()
            score_to_store(model, text_emb, paths, ids, replace(job, settings=settings), work, {"model": "bench"},
                           progress=False, log=lambda m: None)
            seconds = time.perf_counter() - start
            results[name] = {"forwards_per_image": 1 if settings.views == "dense" else
                             1 + settings.grid ** 2 + settings.crops,
                             "input_side": dense_size_for(model, settings.dense_size)
                             if settings.views == "dense" else clip.image_size_of(model),
                             "gflops_per_image": round(tower_gflops(model, settings, job.batch_images), 4),
                             "ms_per_image": round(1000 * seconds / len(paths), 2),
                             "label_map": estimators_map(work / STORE_NAME, truth, train, init)}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    auto = f"dense_{dense_size_for(model, None)}"
    flops_ratio = results["crops"]["gflops_per_image"] / results[auto]["gflops_per_image"] if auto in results else None
    reference = {}
    for arch in args.reference:  # CLIP's own towers, random weights: the FLOPs do not depend on them
        ref = clip.create_model(arch).eval()
        crops, dense = (tower_gflops(ref, replace(job.settings, views=v, dense_size=None), 2)
                        for v in ("crops", "dense"))
        reference[arch] = {"crops_gflops": round(crops, 2), "dense_gflops": round(dense, 2),
                           "dense_side": dense_size_for(ref, None), "flops_ratio": round(crops / dense, 2)}
        print(f"{arch}: {json.dumps(reference[arch])}", flush=True)
    print(json.dumps({"flops_ratio": None if flops_ratio is None else round(flops_ratio, 2),
                      "images": len(paths), "model": descriptor["model"], "modes": results, "reference": reference}))


if __name__ == "__main__":
    main()
