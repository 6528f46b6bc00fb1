"""Stage `correct`: initial labels (+ known labels) → data/labels/corrected.parquet (column `corrected`)
and data/prototypes.zarr.

With known labels (ratio > 0) the `prototypes` and `cooccurrence` sections transfer them to unknown
entries (pipeline.transfer); known entries are then written over everything, so they always win.
"""

from __future__ import annotations

import numpy as np

from pipeline.correct import (
    CALIBRATIONS,
    METHODS,
    CooccurrenceTransfer,
    Correction,
    PrototypeTransfer,
    correct_with_known,
)
from pipeline.metrics import inversions
from pipeline.storage import Table, scored_embeddings, write_small_store, write_table
from pipeline.transfer import THRESHOLDS, ThresholdRule
from stages.common import CORRECTED, INITIAL, MANIFEST, OBSERVED, PROTOTYPES, SCORES, Params


def threshold_rule(p: Params) -> ThresholdRule | None:
    """The section's threshold rule; None when `threshold: none` (its other keys are checked all the same)."""
    method = p.get("threshold", str, choices=THRESHOLDS)
    rule = ThresholdRule(method=THRESHOLDS[1] if method == "none" else method,
                         momentum=p.get("momentum", float, lo=0.0, hi=1.0), batch_size=p.get("batch_size", int, lo=1),
                         temperature=p.get("temperature", float, lo=1e-6),
                         lr=p.get("lr", float, lo=0.0), steps=p.get("steps", int, lo=0), seed=p.get("seed", int))
    return None if method == "none" else rule


def check(params: Params) -> tuple[Correction, PrototypeTransfer | None, CooccurrenceTransfer | None]:
    p, protos_p, cooc_p = params.section("correct"), params.section("prototypes"), params.section("cooccurrence")
    correction = Correction(p.get("source", str, choices=("z0", "tiles", "crops", "cdul", "cut")),
                            p.get("method", str, choices=METHODS), p.get("beta", int, lo=0),
                            p.get("hard_threshold", float, lo=0.0, hi=1.0),
                            p.get("calibration", str, choices=CALIBRATIONS, default="none"),
                            p.get("margin", float, lo=0.0, default=1.0))
    # both sections are checked even when off, so switching one on never meets a bad key late
    protos_rule = threshold_rule(protos_p)
    protos = PrototypeTransfer(protos_rule, protos_p.get("k", int, lo=1), protos_p.get("bank", int, lo=1),
                               protos_p.get("raise_logit", float, lo=0.0))
    cooc_rule = threshold_rule(cooc_p)
    cooc = CooccurrenceTransfer(cooc_rule, cooc_p.get("raise_logit", float, lo=0.0))
    return correction, None if protos_rule is None else protos, None if cooc_rule is None else cooc


def run(params: Params) -> None:
    correction, protos, cooc = check(params)
    initial, observed, manifest = Table(INITIAL), Table(OBSERVED), Table(MANIFEST)
    known = observed.column("known").astype(bool)
    any_known = bool(known.any())
    labels = manifest.column("labels") if any_known else np.zeros(known.shape, np.int8)
    out = correct_with_known(initial.column(correction.source), known, labels, correction, protos, cooc,
                             embeddings=lambda: scored_embeddings(SCORES))
    write_small_store(PROTOTYPES, out.store, {"prototypes": protos is not None and any_known,
                                              "cooccurrence": cooc is not None and any_known,
                                              "classes": initial.classes})
    write_table(CORRECTED, {"image_id": initial.column("image_id"), "split": initial.column("split"),
                            "corrected": out.target}, initial.classes)
    up, down = out.raised, out.lowered
    print(f"corrected {correction.source} with {correction.method} on top-{correction.beta}; {int(known.sum())} "
          f"known entries fixed; {int(up.sum())} unknown entries raised, {int(down.sum())} lowered by transfer "
          f"→ {CORRECTED}")
    if manifest.has("labels"):  # a person tuning β wants to see at once what the correction did to the order
        train = initial.column("split") == "train"
        truth = manifest.column("labels")
        print(f"train inversions: {inversions(truth[train], initial.column(correction.source)[train])} before, "
              f"{inversions(truth[train], out.target[train])} after")
        if up.any():
            print(f"raised entries truly positive: {truth[up].mean():.3f}")
        if down.any():
            print(f"lowered entries truly negative: {1 - truth[down].mean():.3f}")
