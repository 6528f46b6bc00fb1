"""Stage `correct`: initial labels (+ known labels) → data/labels/corrected.parquet (column `target`)."""

from __future__ import annotations

from pipeline.correct import METHODS, apply_known_labels, correct_labels
from pipeline.metrics import inversions
from pipeline.storage import Table, write_table
from stages.common import CORRECTED, INITIAL, MANIFEST, OBSERVED, Params


def run(params: Params) -> None:
    p = params.section("correct")
    source = p.get("source", str, choices=("z0", "cut", "cdul"))
    method = p.get("method", str, choices=METHODS)
    beta = p.get("beta", int, lo=0)
    initial, observed, manifest = Table(INITIAL), Table(OBSERVED), Table(MANIFEST)
    target = correct_labels(initial.column(source), beta, method, p.get("hard_threshold", float, lo=0.0, hi=1.0))
    known = observed.column("known")
    if known.any():  # partial labels: what is known is never guessed
        target = apply_known_labels(target, known, manifest.column("labels"))
    write_table(CORRECTED, {"image_id": initial.column("image_id"), "split": initial.column("split"),
                            "target": target}, initial.classes)
    print(f"corrected {source} with {method} on top-{beta}; {int(known.sum())} known entries fixed → {CORRECTED}")
    if manifest.has("labels"):  # a person tuning β wants to see at once what the correction did to the order
        train = initial.column("split") == "train"
        truth = manifest.column("labels")[train]
        print(f"train inversions: {inversions(truth, initial.column(source)[train])} before, "
              f"{inversions(truth, target[train])} after")
