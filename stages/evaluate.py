"""Stage `evaluate`: every label table (train split) and model (test split) against ground truth →
reports/metrics.json, reports/plots/, reports/report.html."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from pipeline import clip
from pipeline.metrics import classification_report, inversions, mean_ap, per_class_ap, precision_recall_curve
from pipeline.report import render_report
from pipeline.storage import Table, atomic_path, manifest_paths, open_store
from pipeline.student import adapter_module, load_student, predict_paths
from stages.common import (
    CEILING,
    LABEL_COLUMNS,
    MANIFEST,
    METRICS,
    PLOTS,
    REPORT,
    SCORES,
    STUDENT,
    Params,
    write_json,
)

REPORT_RUNGS = ("z0", "cut", "corrected", "refined")  # the per-image view of label changes in the report


def check(params: Params) -> tuple[float, int, int]:
    p = params.section("evaluate")
    return (p.get("threshold", float, lo=0.0, hi=1.0), p.get("top_k", int, lo=1),
            p.get("examples", int, lo=0, default=12))


def run(params: Params) -> None:
    threshold, top_k, n_examples = check(params)
    manifest = Table(MANIFEST)
    if not manifest.has("labels"):
        write_json(METRICS, {})
        print("dataset has no ground truth: nothing to evaluate")
        return
    truth = manifest.column("labels").astype(np.int8)
    split = manifest.column("split")
    train, test = split == "train", split == "test"
    row = {image_id: i for i, image_id in enumerate(manifest.column("image_id"))}
    metrics: dict = {"labels": {}}

    tables = {path: Table(path) for path, _ in LABEL_COLUMNS.values()}  # each label table read once
    train_rows = np.flatnonzero(train)
    train_logits = {}  # rung → its train logits in manifest order, for the report
    for name, (path, column) in LABEL_COLUMNS.items():  # label quality on the train split
        table = tables[path]
        rows = np.array([row[i] for i in table.column("image_id")])
        keep = train[rows]
        y, z = truth[rows][keep], table.column(column)[keep]
        metrics["labels"][name] = {"map": mean_ap(y, z), "inversions": inversions(y, z)}
        train_logits[name] = np.empty_like(z)
        train_logits[name][np.searchsorted(train_rows, rows[keep])] = z

    z0 = np.asarray(open_store(SCORES, required=("global",))["global"][:], dtype=np.float32)
    if manifest.has("salient"):
        metrics["teacher"] = {"salient_top1": float((z0[test].argmax(1) == manifest.column("salient")[test]).mean())}
    test_paths = list(manifest_paths(manifest)[test])
    predictions = {"zero_shot": z0[test]}
    student, _, size = load_student(STUDENT)
    predictions["student"] = predict_paths(student, size, test_paths)
    ceiling = torch.load(CEILING, weights_only=True)
    if ceiling.get("kind") == "adapter":
        module = adapter_module(ceiling, clip.load_described(ceiling["backbone"]))
        predictions["ceiling"] = predict_paths(module, module.image_size, test_paths)
    y_test = truth[test]
    metrics["test"] = {m: classification_report(y_test, z, threshold, top_k) for m, z in predictions.items()}
    t = metrics["test"]
    if "ceiling" in t and abs(t["ceiling"]["map"] - t["zero_shot"]["map"]) > 1e-9:
        metrics["gap_closure"] = (t["student"]["map"] - t["zero_shot"]["map"]) / (
            t["ceiling"]["map"] - t["zero_shot"]["map"])
    metrics = _finite(metrics)
    write_json(METRICS, metrics)
    per_class = {m: per_class_ap(y_test, z) for m, z in predictions.items()}
    curves = {m: pr_curve(y_test, z) for m, z in predictions.items()}
    write_plots(manifest.classes, curves, per_class, metrics["labels"])
    html = render_report(metrics, manifest.classes, per_class, test_paths, y_test, predictions["student"],
                         n_examples=n_examples, pr_curves=curves, run=run_info(params, manifest),
                         train_paths=list(manifest_paths(manifest)[train_rows]), train_truth=truth[train_rows],
                         train_rungs={name: train_logits[name] for name in REPORT_RUNGS})
    with atomic_path(REPORT) as tmp:
        tmp.write_text(html)
    _print_summary(metrics)


def _write_csv(path: Path, header: list[str], rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def run_info(params: Params, manifest: Table) -> dict:
    """What the report says about this run: the settings a reader asks first, where the scores came from,
    and every param."""
    from importlib.metadata import version

    p = params.as_dict()
    attrs = dict(open_store(SCORES).attrs)
    summary = {"labels known (ratio)": p.get("ratio"), "estimator (init.views)": p["init"].get("views"),
               "correction": f"{p['correct']['method']} on top-{p['correct']['beta']} of {p['correct']['source']}, "
                             f"calibration {p['correct'].get('calibration', 'none')}",
               "sewing": f"L={p['sew']['L']}, p={p['sew']['p']}, q={p['sew']['q']}, E-step {p['sew'].get('e_step')}",
               "partial-label rule": p.get("rule"), "student": p["distill"]["student"]}
    provenance = {"mlpl": version("mlpl"), "teacher": f"{attrs.get('model')} ({attrs.get('pretrained')})",
                  "teacher weights sha256": str(attrs.get("weights_sha256", ""))[:16] + "…",
                  "scores": f"{attrs.get('n_images')} images, {attrs.get('precision')} on {attrs.get('device')}",
                  "dataset": f"{manifest.metadata.get('source', '?')} at {manifest.metadata.get('root', '?')}"}
    return {"summary": summary, "provenance": provenance, "params": p}


def pr_curve(truth: np.ndarray, logits: np.ndarray, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Micro-averaged (recall, precision), thinned to ≤ `points` points."""
    precision, recall = precision_recall_curve(truth.ravel(), logits.ravel())
    keep = np.unique(np.linspace(0, len(recall) - 1, min(points, len(recall))).astype(int))
    return recall[keep], precision[keep]


def write_plots(classes, curves, per_class, ladder) -> None:
    PLOTS.mkdir(parents=True, exist_ok=True)
    models = list(per_class)
    _write_csv(PLOTS / "per_class_ap.csv", ["class", *models],
               ([name, *(f"{per_class[m][c]:.4f}" for m in models)] for c, name in enumerate(classes)))
    _write_csv(PLOTS / "ladder.csv", ["table", "map"], ([k, f"{v['map']:.4f}"] for k, v in ladder.items()))
    _write_csv(PLOTS / "pr.csv", ["model", "recall", "precision"],
               ([m, f"{r:.4f}", f"{p:.4f}"] for m, (recall, precision) in curves.items()
                for r, p in zip(recall, precision, strict=True)))


def _finite(obj):
    """NaN has no place in JSON: a quantity that cannot be computed is absent."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items() if not (isinstance(v, float) and not math.isfinite(v))}
    return obj


def _print_summary(m: dict) -> None:
    print("train label mAP: " + "  →  ".join(f"{k} {v['map']:.3f}" for k, v in m["labels"].items()))
    for name, r in m["test"].items():
        print(f"test {name:9s} mAP {r['map']:.3f}  CF1 {r['cf1']:.3f}  OF1 {r['of1']:.3f}  "
              f"hamming {r['hamming']:.3f}")
    if "teacher" in m:
        print(f"teacher salient top-1 {m['teacher']['salient_top1']:.3f}")
    if "gap_closure" in m:
        print(f"gap closure {m['gap_closure']:.3f}")
