"""Is a review worth it? Known labels a simulated reviewer chose (the entries the review page shows first,
answered from the ground truth) against known labels drawn at random, test mAP of the student, mean ± sd.

    python benchmarks/review.py [--params params.yaml] [--config configs/contexts.yaml] [--seeds 0 1 2]
                                [--budget 0.02] [--reference 0.1] [--set KEY=VALUE ...] [--jobs 1] [--keep DIR]

Builds a fresh copy of the project (benchmarks/project.py) and, per dataset seed S (`dataset.seed=S`, and
`seed=S` for the random draw: a review's choice has no seed of its own, so the seeds must change the
images), queues four `dvc exp run`s: no known label (`none`), `--budget` of the entries at random
(`random`, `known: random`, `ratio` = budget), the same budget reviewed (`uncertain`, `known: uncertain`),
and `--reference` of the entries at random (`reference`, the partial-label papers' 10 %). Every row keeps
`unknown: pseudo`: the known entries override CLIP's corrected pseudo labels, the rest train on them.
Prints the table and the review issue's checks; ends with one JSON line:
{"params", "config", "overrides", "seeds", "budget", "reference", "rows": {name: {"student": {mean, sd,
values}, "cf1", "of1"}}, "checks": {...}, "wall_s"}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ladder import (  # noqa: E402
    add_project_options,
    add_queue_options,
    mean_sd,
    project_dir,
    run_experiments,
    sh,
    summarise,
)
from benchmarks.project import copy_project  # noqa: E402
from benchmarks.table1 import beats, row_figures  # noqa: E402


def row_flags(budget: float, reference: float) -> dict[str, list[str]]:
    """Each row's -S overrides (besides the seeds)."""
    return {"none": ["ratio=0.0"], "random": ["known=random", f"ratio={budget}"],
            "uncertain": ["known=uncertain", f"budget={budget}", "ratio=0.0"],
            "reference": ["known=random", f"ratio={reference}"]}


def checks(rows: dict[str, dict]) -> dict[str, bool]:
    """The review issue's targets on the student's test mAP: the reviewed budget at least as good as the
    reference share at random (mean), and above the same budget at random by more than 2 sd."""
    s = {name: figs["student"] for name, figs in rows.items()}
    return {"uncertain_at_least_reference": s["uncertain"]["mean"] >= s["reference"]["mean"],
            "uncertain_beats_random_by_2sd": beats(s["uncertain"], s["random"], 2)}


def table(rows: dict[str, dict], budget: float, reference: float) -> str:
    what = {"none": "no known label", "random": f"{budget:g} of the entries, at random",
            "uncertain": f"{budget:g} of the entries, the review page's first (a simulated review)",
            "reference": f"{reference:g} of the entries, at random"}
    lines = ["| row | known | mAP (test) | CF1 | OF1 |", "|---|---|---|---|---|"]
    for name, figs in rows.items():
        cells = [mean_sd(figs[k]) for k in ("student", "cf1", "of1")]
        lines.append(f"| `{name}` | {what[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_project_options(ap)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="dataset seeds (and draw seeds)")
    ap.add_argument("--budget", type=float, default=0.02, help="share of train entries answered")
    ap.add_argument("--reference", type=float, default=0.1, help="share of train entries known at random to match")
    add_queue_options(ap)
    args = ap.parse_args()
    start = time.perf_counter()
    project = project_dir(args.keep, "mlpl-review-")
    extra = [a for kv in args.overrides for a in ("-S", kv)]
    rows_flags = row_flags(args.budget, args.reference)
    names = {(row, seed): f"{row}-seed{seed}" for seed in args.seeds for row in rows_flags}
    try:
        copy_project(project, args.params, lambda cmd, cwd: sh(["bash", "-c", cmd], cwd), args.config)
        found = run_experiments(project, {
            name: ["-S", f"dataset.seed={seed}", "-S", f"seed={seed}",
                   *(a for f in rows_flags[row] for a in ("-S", f)), *extra]
            for (row, seed), name in names.items()}, args.jobs)
    finally:
        if args.keep is None:
            shutil.rmtree(project, ignore_errors=True)
    rows = {row: summarise({s: row_figures(found[names[(row, s)]], "student") for s in args.seeds})
            for row in rows_flags}
    print(f"\nbudget {args.budget}, reference {args.reference}, dataset seeds {args.seeds} (mean ± sd)\n\n"
          f"{table(rows, args.budget, args.reference)}\n")
    print(json.dumps({"params": str(args.params), "config": str(args.config or ""), "overrides": args.overrides,
                      "seeds": args.seeds, "budget": args.budget, "reference": args.reference, "rows": rows,
                      "checks": checks(rows), "wall_s": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
