"""Stage `evaluate`: every label table (train split) and model (test split) against ground truth →
reports/metrics.json, reports/plots/*.csv."""

from __future__ import annotations

import csv
import math

import numpy as np
import torch

from pipeline.correct import POSITIVE_LOGIT
from pipeline.heads import HeadTraining, predict_head, train_soft_head
from pipeline.metrics import classification_report, inversions, mean_ap, per_class_ap
from pipeline.storage import Table, atomic_path, open_store
from stages.common import (
    CORRECTED,
    INITIAL,
    MANIFEST,
    METRICS,
    PLOTS,
    REFINED,
    SCORES,
    STUDENT,
    Params,
    write_json,
)


def run(params: Params) -> None:
    p = params.section("evaluate")
    threshold, top_k = p.get("threshold", float, lo=0.0, hi=1.0), p.get("top_k", int, lo=1)
    manifest = Table(MANIFEST)
    metrics: dict = {}
    if not manifest.has("labels"):
        write_json(METRICS, metrics)
        print("dataset has no ground truth: nothing to evaluate")
        return
    truth = manifest.column("labels").astype(np.int8)
    split = manifest.column("split")
    train, test = split == "train", split == "test"
    row = {image_id: i for i, image_id in enumerate(manifest.column("image_id"))}

    # Label quality ladder on the train split.
    initial, corrected, refined = Table(INITIAL), Table(CORRECTED), Table(REFINED)
    tables = {"z0": (initial, "z0"), "cdul": (initial, "cdul"), "cut": (initial, "cut"),
              "corrected": (corrected, "target"), "refined": (refined, "z")}
    for name, (table, column) in tables.items():
        rows = np.array([row[i] for i in table.column("image_id")])
        keep = train[rows]
        y, z = truth[rows][keep], table.column(column)[keep]
        metrics.setdefault("labels", {})[name] = {"map": mean_ap(y, z), "inversions": inversions(y, z)}

    # Models on the test split.
    store = open_store(SCORES, required=("global", "image_emb"))
    z0 = np.asarray(store["global"][:], dtype=np.float32)
    emb = np.asarray(store["image_emb"][:], dtype=np.float32)
    if manifest.has("salient"):
        salient = manifest.column("salient")
        metrics["teacher"] = {"salient_top1": float((z0[test].argmax(1) == salient[test]).mean())}
    student = torch.load(STUDENT, weights_only=True)
    head = torch.nn.Linear(student["in_dim"], len(manifest.classes))
    head.load_state_dict(student["state_dict"])
    ceiling = train_soft_head(emb[train], np.where(truth[train] > 0, POSITIVE_LOGIT, -POSITIVE_LOGIT),
                              HeadTraining(epochs=p.get("ceiling_epochs", int, lo=1), seed=0))
    predictions = {"zero_shot": z0[test], "student": predict_head(head, emb[test]),
                   "ceiling": predict_head(ceiling, emb[test])}
    metrics["test"] = {m: classification_report(truth[test], z, threshold, top_k) for m, z in predictions.items()}
    t = metrics["test"]
    denom = t["ceiling"]["map"] - t["zero_shot"]["map"]
    if abs(denom) > 1e-9:
        metrics["gap_closure"] = (t["student"]["map"] - t["zero_shot"]["map"]) / denom
    write_json(METRICS, _finite(metrics))
    write_plots(manifest.classes, truth[test], predictions,
                {name: metrics["labels"][name]["map"] for name in tables})
    _print_summary(metrics)


def write_plots(classes, truth, predictions, ladder) -> None:
    PLOTS.mkdir(parents=True, exist_ok=True)
    aps = {m: per_class_ap(truth, z) for m, z in predictions.items()}
    with atomic_path(PLOTS / "per_class_ap.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", *aps])
        for c, name in enumerate(classes):
            w.writerow([name, *(f"{aps[m][c]:.4f}" for m in aps)])
    with atomic_path(PLOTS / "ladder.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["table", "map"])
        for name, value in ladder.items():
            w.writerow([name, f"{value:.4f}"])


def _finite(obj):
    """NaN has no place in JSON: a quantity that cannot be computed is absent."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items() if not (isinstance(v, float) and not math.isfinite(v))}
    return obj


def _print_summary(m: dict) -> None:
    ladder = "  →  ".join(f"{k} {v['map']:.3f}" for k, v in m["labels"].items())
    print(f"train label mAP: {ladder}")
    for name, r in m["test"].items():
        print(f"test {name:9s} mAP {r['map']:.3f}  CF1 {r['cf1']:.3f}  OF1 {r['of1']:.3f}  hamming {r['hamming']:.3f}")
    if "teacher" in m:
        print(f"teacher salient top-1 {m['teacher']['salient_top1']:.3f}")
    if "gap_closure" in m:
        print(f"gap closure {m['gap_closure']:.3f}")
