"""Stage `correct`: initial labels (+ known labels) → data/labels/corrected.parquet (column `corrected`)
and data/prototypes.zarr.

With known labels (ratio > 0) the `prototypes` and `cooccurrence` sections transfer them to unknown
entries (pipeline.transfer); known entries are then written over everything, so they always win.
"""

from __future__ import annotations

import numpy as np

from pipeline.correct import CALIBRATIONS, METHODS, apply_known_labels, calibrate_per_class, correct_labels
from pipeline.metrics import inversions
from pipeline.storage import Table, write_small_store, write_table
from pipeline.transfer import (
    THRESHOLDS,
    ThresholdRule,
    apply_transfer,
    transfer_by_cooccurrence,
    transfer_by_prototypes,
)
from stages.common import CORRECTED, INITIAL, MANIFEST, OBSERVED, PROTOTYPES, Params, scored_embeddings


def threshold_rule(p: Params) -> ThresholdRule | None:
    """The section's threshold rule; None when `threshold: none` (its other keys are checked all the same)."""
    method = p.get("threshold", str, choices=THRESHOLDS)
    rule = ThresholdRule(method=THRESHOLDS[1] if method == "none" else method,
                         momentum=p.get("momentum", float, lo=0.0, hi=1.0), batch_size=p.get("batch_size", int, lo=1),
                         temperature=p.get("temperature", float, lo=1e-6),
                         lr=p.get("lr", float, lo=0.0), steps=p.get("steps", int, lo=0), seed=p.get("seed", int))
    return None if method == "none" else rule


def check(params: Params) -> tuple:
    p, protos_p, cooc_p = params.section("correct"), params.section("prototypes"), params.section("cooccurrence")
    correction = (p.get("source", str, choices=("z0", "tiles", "crops", "cdul", "cut")),
                  p.get("method", str, choices=METHODS), p.get("beta", int, lo=0),
                  p.get("hard_threshold", float, lo=0.0, hi=1.0),
                  p.get("calibration", str, choices=CALIBRATIONS, default="none"),
                  p.get("margin", float, lo=0.0, default=1.0))
    # both sections are checked even when off, so switching one on never meets a bad key late
    protos = (threshold_rule(protos_p), protos_p.get("k", int, lo=1), protos_p.get("bank", int, lo=1),
              protos_p.get("raise_logit", float, lo=0.0))
    cooc = (threshold_rule(cooc_p), cooc_p.get("raise_logit", float, lo=0.0))
    return correction, None if protos[0] is None else protos, None if cooc[0] is None else cooc


def run(params: Params) -> None:
    (source, method, beta, hard_threshold, calibration, margin), protos, cooc = check(params)
    use_protos, use_cooc = protos is not None, cooc is not None
    initial, observed, manifest = Table(INITIAL), Table(OBSERVED), Table(MANIFEST)
    target = correct_labels(initial.column(source), beta, method, hard_threshold)
    if calibration == "median":
        target = calibrate_per_class(target, margin)
    known = observed.column("known").astype(bool)
    any_known = bool(known.any())
    labels = manifest.column("labels") if any_known else np.zeros(known.shape, np.int8)
    up = np.zeros(known.shape, bool)
    down = up.copy()
    store: dict = {}
    if any_known and use_protos:
        emb, text = scored_embeddings()
        rule, k, bank_size, raise_logit = protos
        up, down, bank, sims = transfer_by_prototypes(emb, text, target, known, labels, rule, k, bank_size)
        store = {"visual": bank.visual, "counts": bank.counts, "text": bank.text, **sims}
        target = apply_transfer(target, up, down, raise_logit)
    if any_known and use_cooc:
        up_c, store["cooccurrence"] = transfer_by_cooccurrence(known, labels, cooc[0])
        target = apply_transfer(target, up_c, np.zeros_like(up_c), cooc[1])
        up |= up_c
    write_small_store(PROTOTYPES, store, {"prototypes": use_protos and any_known,
                                          "cooccurrence": use_cooc and any_known, "classes": initial.classes})
    if any_known:  # partial labels: what is known is never guessed
        target = apply_known_labels(target, known, manifest.column("labels"))
    write_table(CORRECTED, {"image_id": initial.column("image_id"), "split": initial.column("split"),
                            "corrected": target}, initial.classes)
    print(f"corrected {source} with {method} on top-{beta}; {int(known.sum())} known entries fixed; "
          f"{int(up.sum())} unknown entries raised, {int(down.sum())} lowered by transfer → {CORRECTED}")
    if manifest.has("labels"):  # a person tuning β wants to see at once what the correction did to the order
        train = initial.column("split") == "train"
        truth = manifest.column("labels")
        print(f"train inversions: {inversions(truth[train], initial.column(source)[train])} before, "
              f"{inversions(truth[train], target[train])} after")
        if up.any():
            print(f"raised entries truly positive: {truth[up].mean():.3f}")
        if down.any():
            print(f"lowered entries truly negative: {1 - truth[down].mean():.3f}")
