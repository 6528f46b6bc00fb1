"""How much the teacher's joint image-text space knows of the train labels, against the tower's own cells:
the ceiling of TRM-ML's text-region matching (pipeline/trm.py) on a benchmark.

    python benchmarks/joint_space.py [--project DIR] [--config configs/contexts.yaml] [--keep DIR]

Reads a project where `features`, `init` and their inputs have run (`--project`, default this checkout after
`make repro`), or builds a fresh copy with `--config` (as benchmarks/ladder.py does) and runs
`dvc repro features init` in it. On the train images it prints the label mAP of:
  - CLIP's global scores (z⁰ of `init`),
  - the text embeddings against the grid cells mapped into the joint space (pipeline.clip.cell_projection):
    the best cell and the mean of the two best cells per class (no training: MaskCLIP-style dense scores),
  - linear probes trained on the true labels of the first 80 % of the images and scored on the rest, over
    the cells pooled (mean, max, both) in the joint space and in the tower's own feature space, which the
    adapter's query head reads.
Ends with one JSON line: {"project", "images", "global", "dense_top1", "dense_top2", "probe": {name: mAP},
"joint_dim", "tower_dim"}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.ladder import project_dir, sh  # noqa: E402
from benchmarks.project import copy_project  # noqa: E402


def probe_map(x: torch.Tensor, y: torch.Tensor, fit_share: float = 0.8, steps: int = 500) -> float:
    """Held-out mAP of per-class logistic regressions on standardised x [N, D] fitted to y [N, C] (seeded)."""
    from pipeline.metrics import mean_ap

    torch.manual_seed(0)
    n_fit = int(len(x) * fit_share)
    mu, sd = x[:n_fit].mean(0), x[:n_fit].std(0) + 1e-6
    x = (x - mu) / sd
    linear = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(linear(x[:n_fit]), y[:n_fit]).backward()
        opt.step()
    with torch.no_grad():
        return mean_ap(y[n_fit:].numpy(), linear(x[n_fit:]).numpy())


def measure(project: Path) -> dict:
    import zarr

    from pipeline import clip
    from pipeline.metrics import mean_ap
    from pipeline.storage import Table, read_json

    model = clip.load_described(read_json(project / "data/teacher/descriptor.json"))
    weight, bias, norm = clip.cell_projection(model.visual)
    manifest = Table(project / "data/prepared/manifest.parquet")
    train = manifest.column("split") == "train"
    truth = manifest.column("labels").astype(np.float32)[train]
    store = zarr.open_group(str(project / "data/features.zarr"), mode="r")
    grid = torch.from_numpy(np.asarray(store["grid"][:], dtype=np.float32))  # train images, manifest order
    text = torch.from_numpy(np.asarray(zarr.open_group(str(project / "data/scores.zarr"), mode="r")["text_emb"][:]))
    cells = grid.flatten(2).transpose(1, 2)  # [N, T, D]
    joint = clip.joint_cells(cells, weight, bias, norm)  # [N, T, E]
    cos = F.normalize(joint, dim=-1) @ F.normalize(text.float(), dim=-1).T  # [N, T, C]
    y = torch.from_numpy(truth)
    pools = {"mean": lambda t: t.mean(1), "max": lambda t: t.amax(1),
             "mean+max": lambda t: torch.cat([t.mean(1), t.amax(1)], 1)}
    probe = {f"{space} {name}": probe_map(pool(t), y) for space, t in (("joint", joint), ("tower", cells))
             for name, pool in pools.items()}
    return {"project": str(project), "images": len(truth),
            "global": mean_ap(truth, Table(project / "data/labels/initial.parquet").column("z0")[train]),
            "dense_top1": mean_ap(truth, cos.amax(1).numpy()),
            "dense_top2": mean_ap(truth, cos.topk(min(2, cos.shape[1]), dim=1).values.mean(1).numpy()),
            "probe": probe, "joint_dim": int(weight.shape[0]), "tower_dim": int(weight.shape[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=ROOT, help="a project where `features` and `init` have run")
    ap.add_argument("--config", type=Path, help="build a fresh copy with this config of configs/ instead")
    ap.add_argument("--keep", type=Path, help="build the copy here and keep it")
    args = ap.parse_args()
    project, built = args.project, None
    if args.config is not None:
        built = project = project_dir(args.keep, "mlpl-joint-")
        copy_project(project, ROOT / "params.yaml", lambda cmd, cwd: sh(["bash", "-c", cmd], cwd), args.config)
        print("building the project's features (teacher, scores, features) ...", flush=True)
        sh(["dvc", "repro", "features", "init"], project)
    try:
        result = measure(project)
    finally:
        if built is not None and args.keep is None:
            shutil.rmtree(built, ignore_errors=True)
    print(f"train images: {result['images']}; joint space {result['joint_dim']}-d, tower cells {result['tower_dim']}-d")
    print(f"label mAP, CLIP's global scores: {result['global']:.4f}")
    print(f"label mAP, dense text-cell cosine: best cell {result['dense_top1']:.4f}, "
          f"two best {result['dense_top2']:.4f}")
    for name, value in result["probe"].items():
        print(f"held-out mAP, linear probe on true labels, {name}-pooled cells: {value:.4f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
