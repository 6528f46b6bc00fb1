"""Cost of an ablation: full `dvc repro` wall time vs `dvc exp run -S ratio=0.1`, and what each reran.

    python benchmarks/ablation_cost.py [--params tests/tiny_params.yaml | --params params.yaml] [--keep DIR]

Runs in a fresh copy of the project (its git-tracked files, the given params file, a new git repo, no DVC
cache), so the repro computes every stage from scratch. Counts the CLIP views each run computed: the
`score` stage's images × (1 + K + M) when it ran, 0 when it did not (and then checks that the score
store is byte-identical before and after). Ends with one JSON line: wall_ratio, score_reran and details.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.project import TINY_PARAMS, make_project, sh, stages_run  # noqa: E402


def timed(cmd: str, cwd: Path) -> tuple[float, set[str], str]:
    start = time.perf_counter()
    r = sh(cmd, cwd)
    return time.perf_counter() - start, stages_run(r.stdout), r.stdout


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def clip_views(project: Path) -> int:
    """Views the score stage computes for this project: images × (1 + grid² + crops), from its store."""
    import zarr

    attrs = zarr.open_group(str(project / "data" / "scores.zarr"), mode="r").attrs
    cut = attrs["cut"]
    return int(attrs["n_images"]) * (1 + cut["grid"] ** 2 + cut["crops"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=TINY_PARAMS,
                    help="params file of the project copy (default: the tiny test config)")
    ap.add_argument("--ratio", default="0.1", help="the ablation: dvc exp run -S ratio=<this>")
    ap.add_argument("--keep", type=Path, help="build the project copy in this (empty) folder and keep it")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="mlpl-ablation-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        project = make_project(base, args.params.resolve())
        repro_s, repro_stages, _ = timed("dvc repro", project)
        views_per_run = clip_views(project)
        before = tree_digest(project / "data" / "scores.zarr")
        sh("git add -A && git commit -qm repro", project)
        exp_s, exp_stages, _ = timed(f"dvc exp run -S ratio={args.ratio}", project)
        score_reran = "score" in exp_stages
        unchanged = tree_digest(project / "data" / "scores.zarr") == before
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    ablation_views = views_per_run if score_reran else 0
    import yaml

    order = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])  # DAG order, as dvc.yaml lists them
    print(f"params: {args.params}")
    print(f"dvc repro: {repro_s:.1f}s, ran {[s for s in order if s in repro_stages]}, "
          f"{views_per_run} CLIP views")
    print(f"dvc exp run -S ratio={args.ratio}: {exp_s:.1f}s, ran {[s for s in order if s in exp_stages]}, "
          f"{ablation_views} CLIP views (score store {'unchanged' if unchanged else 'CHANGED'})")
    print(f"wall ratio ablation/repro: {exp_s / repro_s:.3f}")
    print(json.dumps({"wall_ratio": round(exp_s / repro_s, 3), "score_reran": score_reran,
                      "clip_views_ablation": ablation_views, "clip_views_repro": views_per_run,
                      "score_store_unchanged": unchanged, "repro_s": round(repro_s, 1), "ablation_s": round(exp_s, 1),
                      "repro_stages": sorted(repro_stages), "ablation_stages": sorted(exp_stages),
                      "params": str(args.params)}))


if __name__ == "__main__":
    main()
