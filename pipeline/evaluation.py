"""What `evaluate` measures: the label ladder on the train split, every model on the test split, gap
closure, and the plot tables. Definitions of each figure: docs/outputs.md (metrics.json)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.metrics import classification_report, inversions, mean_ap, precision_recall_curve
from pipeline.storage import RowIndex, atomic_path


def label_ladder(truth: np.ndarray, train: np.ndarray, manifest: RowIndex,
                 rungs: Mapping[str, tuple[Sequence[str], np.ndarray]]) -> tuple[dict, dict[str, np.ndarray]]:
    """Each rung's label quality on the train split: ({rung: {map, inversions}}, {rung: train logits in
    manifest order}).

    truth [N, C] and train [N] are in manifest order, `manifest` gives an image id's row in it;
    `rungs` maps a rung to (image ids, logits) of its label table, in the table's order.
    """
    train_rows = np.flatnonzero(train)
    quality, train_logits = {}, {}
    for name, (image_ids, logits) in rungs.items():
        rows = manifest.rows(image_ids)
        keep = train[rows]
        y, z = truth[rows][keep], logits[keep]
        quality[name] = {"map": mean_ap(y, z), "inversions": inversions(y, z)}
        train_logits[name] = np.empty_like(z)
        train_logits[name][np.searchsorted(train_rows, rows[keep])] = z
    return quality, train_logits


def transfer_precision(truth: np.ndarray, raised: np.ndarray, lowered: np.ndarray) -> dict:
    """How right the known-label transfers of `correct` were: {raised, lowered: entry counts; raised_right:
    share of raised entries truly positive; lowered_right: share of lowered entries truly negative} (a share
    is NaN when nothing moved). All [N, C] over the same images."""
    raised, lowered = np.asarray(raised, bool), np.asarray(lowered, bool)
    return {"raised": int(raised.sum()), "lowered": int(lowered.sum()),
            "raised_right": float(truth[raised].mean()) if raised.any() else float("nan"),
            "lowered_right": float(1 - truth[lowered].mean()) if lowered.any() else float("nan")}


def test_reports(truth: np.ndarray, predictions: Mapping[str, np.ndarray], threshold: float, top_k: int) -> dict:
    """{model: classification_report} of every model's test logits."""
    return {m: classification_report(truth, z, threshold, top_k) for m, z in predictions.items()}


def gap_closure(test: Mapping[str, dict]) -> float | None:
    """(student − zero-shot) / (ceiling − zero-shot) test mAP; None without a ceiling or a gap."""
    if "ceiling" not in test or abs(test["ceiling"]["map"] - test["zero_shot"]["map"]) <= 1e-9:
        return None
    return (test["student"]["map"] - test["zero_shot"]["map"]) / (test["ceiling"]["map"] - test["zero_shot"]["map"])


def salient_top1(z0: np.ndarray, salient: np.ndarray) -> float:
    """Share of images whose top global class is their salient object (the teacher's iconic bias)."""
    return float((z0.argmax(1) == salient).mean())


def pr_curve(truth: np.ndarray, logits: np.ndarray, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Micro-averaged (recall, precision), thinned to ≤ `points` points."""
    precision, recall = precision_recall_curve(truth.ravel(), logits.ravel())
    keep = np.unique(np.linspace(0, len(recall) - 1, min(points, len(recall))).astype(int))
    return recall[keep], precision[keep]


def finite(obj):
    """NaN has no place in JSON: a quantity that cannot be computed is absent."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items() if not (isinstance(v, float) and not math.isfinite(v))}
    return obj


def _write_csv(path: Path, header: list[str], rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_plots(plots: str | Path, classes: Sequence[str], curves: Mapping, per_class: Mapping,
                ladder: Mapping) -> None:
    """The tables `dvc plots` draws: per_class_ap.csv, ladder.csv, pr.csv (docs/outputs.md)."""
    plots = Path(plots)
    plots.mkdir(parents=True, exist_ok=True)
    models = list(per_class)
    _write_csv(plots / "per_class_ap.csv", ["class", *models],
               ([name, *(f"{per_class[m][c]:.4f}" for m in models)] for c, name in enumerate(classes)))
    _write_csv(plots / "ladder.csv", ["table", "map"], ([k, f"{v['map']:.4f}"] for k, v in ladder.items()))
    _write_csv(plots / "pr.csv", ["model", "recall", "precision"],
               ([m, f"{r:.4f}", f"{p:.4f}"] for m, (recall, precision) in curves.items()
                for r, p in zip(recall, precision, strict=True)))


def summary_lines(m: dict) -> list[str]:
    """The console summary of a metrics dict."""
    lines = ["train label mAP: " + "  →  ".join(f"{k} {v['map']:.3f}" for k, v in m["labels"].items())]
    for name, r in m["test"].items():
        lines.append(f"test {name:9s} mAP {r['map']:.3f}  CF1 {r['cf1']:.3f}  OF1 {r['of1']:.3f}  "
                     f"hamming {r['hamming']:.3f}")
    if "teacher" in m:
        lines.append(f"teacher salient top-1 {m['teacher']['salient_top1']:.3f}")
    if "gap_closure" in m:
        lines.append(f"gap closure {m['gap_closure']:.3f}")
    return lines


def run_summary(params: Mapping, score_attrs: Mapping, manifest_metadata: Mapping, mlpl_version: str) -> dict:
    """What the report says about a run: the settings a reader asks first, where the scores came from,
    and every param (`params`: the params file as a dict)."""
    p, s = params, params["sew"]
    summary = {"labels known (ratio)": p.get("ratio"), "estimator (init.views)": p["init"].get("views"),
               "correction": f"{p['correct']['method']} on top-{p['correct']['beta']} of {p['correct']['source']}, "
                             f"calibration {p['correct'].get('calibration', 'none')}",
               "sewing": f"L={s.get('max_overlays')}, p={s.get('overlay_prob')}, q={s.get('overlay_side')}, "
                         f"E-step {s.get('e_step')}",
               "partial-label method": p.get("method", "none"), "student": p["distill"]["student"]}
    a = score_attrs
    provenance = {"mlpl": mlpl_version, "teacher": f"{a.get('model')} ({a.get('pretrained')})",
                  "teacher weights sha256": str(a.get("weights_sha256", ""))[:16] + "…",
                  "scores": f"{a.get('n_images')} images, {a.get('precision')} on {a.get('cpu', a.get('device'))}",
                  "dataset": f"{manifest_metadata.get('source', '?')} at {manifest_metadata.get('root', '?')}"}
    return {"summary": summary, "provenance": provenance, "params": p}
