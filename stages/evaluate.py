"""Stage `evaluate`: every label table (train split) and model (test split) against ground truth →
reports/metrics.json, reports/plots/, reports/report.html."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from typing import ClassVar

import numpy as np

from pipeline.evaluation import (
    finite,
    gap_closure,
    label_ladder,
    pr_curve,
    run_summary,
    salient_top1,
    summary_lines,
    test_reports,
    transfer_precision,
    write_plots,
)
from pipeline.features import read_test_grid
from pipeline.method_gate import GateResult
from pipeline.metrics import per_class_ap
from pipeline.models import ModelSpec, NoModel, load_adapter, module_of, read_spec, read_student_spec
from pipeline.report import render_report, report_figures, standalone_svg
from pipeline.settings import Settings, setting
from pipeline.storage import Table, atomic_path, manifest_index, manifest_paths, open_store, write_json
from pipeline.student import predict_grid, predict_models
from stages.common import (
    CEILING,
    CORRECTED,
    FEATURES,
    LABEL_COLUMNS,
    MANIFEST,
    METRICS,
    PLOTS,
    REFINED,
    REPORT,
    SCORES,
    STUDENT,
    Params,
)

FIGURES = REPORT.parent / "figures"  # the report's charts as SVG files (docs/outputs.md)
REPORT_RUNGS = ("z0", "cut", "corrected", "refined")  # the per-image view of label changes in the report


@dataclass(frozen=True)
class EvaluateSettings(Settings):
    threshold: float = setting(0.5, ge=0.0, le=1.0)  # on probabilities, for the thresholded metrics
    top_k: int = setting(3, ge=1)
    examples: int = setting(12, ge=0)  # example images in reports/report.html

    SECTION: ClassVar[str] = "evaluate"


def check(params: Params) -> tuple[float, int, int]:
    s = params.section("evaluate").build(EvaluateSettings)
    return s.threshold, s.top_k, s.examples


def predict_test(checkpoints: dict[str, tuple[ModelSpec, dict]], test_ids: np.ndarray,
                 test_paths: list[str]) -> dict[str, np.ndarray]:
    """Each model's test logits, from its (spec, checkpoint dict): a frozen-tower model's adapter over the test
    grid `features` stored, where it is of the same tower at the same size (the same logits; the tower is never
    built, nor open_clip imported); the others over the images."""
    stored_grid = read_test_grid(FEATURES, list(test_ids))
    on_grid = {name: load_adapter(spec, ckpt) for name, (spec, ckpt) in checkpoints.items()
               if stored_grid is not None and spec.tower == (stored_grid.backbone_sha256, stored_grid.image_size)}
    stored = predict_grid(on_grid, stored_grid.grid) if on_grid else {}
    if stored:
        print(f"test logits of {', '.join(stored)} from the tower features in {FEATURES}")
    rest = predict_models({n: (module_of(spec, ckpt), spec.image_size) for n, (spec, ckpt) in checkpoints.items()
                           if n not in stored}, test_paths)
    return {name: stored[name] if name in stored else rest[name] for name in checkpoints}


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
    index = manifest_index(manifest)  # built once: every label table's rows come from it
    tables = {path: Table(path) for path, _ in LABEL_COLUMNS.values()}  # each label table read once
    labels, train_logits = label_ladder(truth, train, index, {
        name: (tables[path].column("image_id"), tables[path].column(column))
        for name, (path, column) in LABEL_COLUMNS.items()})
    metrics: dict = {"labels": labels}
    if tables[CORRECTED].has("raised"):  # what the known-label transfers (correct's, sew's HST) moved, on train
        moved = {name: np.zeros(truth.shape, bool) for name in ("raised", "lowered")}
        for table in (tables[CORRECTED], tables[REFINED]):
            rows = index.rows(table.column("image_id"))
            for name, entries in moved.items():
                if table.has(name):
                    entries[rows] |= table.column(name).astype(bool)
        metrics["transfer"] = transfer_precision(truth[train], moved["raised"][train], moved["lowered"][train])
    verdict = GateResult.of_table(tables[REFINED].metadata)  # sew's held-out gate, where it decided
    if verdict is not None:  # NaN: no class the probe could measure
        metrics["method_gate"] = {"kept": int(verdict.kept), **{
            k: None if np.isnan(v) else v for k, v in (("method_ap", verdict.method_ap),
                                                       ("baseline_ap", verdict.baseline_ap),
                                                       ("lead_sd", verdict.lead_sd))}, "margin": verdict.margin}
    store = open_store(SCORES, required=("global",))
    z0 = np.asarray(store["global"][:], dtype=np.float32)
    # the figures differ by the machine the scores were computed on: say which (docs/outputs.md)
    metrics["scores"] = {k: store.attrs[k] for k in ("precision", "device", "cpu") if k in store.attrs}
    if manifest.has("salient"):
        metrics["teacher"] = {"salient_top1": salient_top1(z0[test], manifest.column("salient")[test])}

    test_paths = list(manifest_paths(manifest)[test])
    checkpoints = {"student": read_student_spec(STUDENT), "ceiling": read_spec(CEILING)}
    models = {name: (spec, ckpt) for name, (spec, ckpt) in checkpoints.items() if not isinstance(spec, NoModel)}
    predictions = {"zero_shot": z0[test], **predict_test(models, manifest.column("image_id")[test], test_paths)}
    y_test = truth[test]
    metrics["test"] = test_reports(y_test, predictions, threshold, top_k)
    # CDUL's estimator without labels (its global-local aggregate, `init`) on the test images: Table 1's CDUL row
    initial = tables[LABEL_COLUMNS["cdul"][0]]
    cdul_rows = index.rows(initial.column("image_id"))
    cdul = np.full(truth.shape, np.nan, np.float32)
    cdul[cdul_rows] = initial.column("cdul")
    if np.isfinite(cdul[test]).all():
        metrics["test"] |= test_reports(y_test, {"cdul": cdul[test]}, threshold, top_k)
    if (closure := gap_closure(metrics["test"])) is not None:
        metrics["gap_closure"] = closure
    metrics = finite(metrics)
    write_json(METRICS, metrics)

    per_class = {m: per_class_ap(y_test, z) for m, z in predictions.items()}
    curves = {m: pr_curve(y_test, z) for m, z in predictions.items()}
    write_plots(PLOTS, manifest.classes, curves, per_class, metrics["labels"])
    run = run_summary(params.as_dict(), dict(open_store(SCORES).attrs), manifest.metadata, version("mlpl"))
    train_rows = np.flatnonzero(train)
    figures = report_figures(metrics, manifest.classes, per_class, curves)
    html = render_report(metrics, manifest.classes, per_class, test_paths, y_test, predictions["student"],
                         n_examples=n_examples, pr_curves=curves, run=run,
                         train_paths=list(manifest_paths(manifest)[train_rows]), train_truth=truth[train_rows],
                         train_rungs={name: train_logits[name] for name in REPORT_RUNGS},
                         test_ids=list(manifest.column("image_id")[test]), figures=figures)
    with atomic_path(FIGURES) as tmp:
        tmp.mkdir(parents=True)
        for name, svg in figures.items():
            (tmp / name).write_text(standalone_svg(svg))
    with atomic_path(REPORT) as tmp:
        tmp.write_text(html)
    print("\n".join(summary_lines(metrics)))
