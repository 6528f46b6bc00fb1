"""reports/report.html: one self-contained page (inline SVG charts, embedded example images)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.label_stats import label_statistics
from pipeline.logits import sigmoid

# Okabe-Ito: distinguishable with every common colour-vision deficiency; text marks (✓ ✗ +) say the rest
COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00")
MARKS = {"hit": "✓", "miss": "✗", "false": "+"}
DEFINITIONS = (
    ("mAP", "mean over classes of the average precision of a score ranking all images for that class; "
            "label tables are scored on the train split (where they are used), models on the test split"),
    ("inversions", "pairs of one class's positive and negative images that a label table orders the wrong "
                   "way round (the negative above), summed over classes: what an order-persistent "
                   "correction leaves alone and refinement should lower"),
    ("gap closure", "(student − zero-shot) / (ceiling − zero-shot) in test mAP: the share of the gap between "
                    "CLIP's zero-shot scores and an adapter trained on the true labels that the label-free "
                    "student closes"),
    ("CF1 / OF1", "per-class mean and overall F1 with probability ≥ the threshold as the prediction; @3: "
                  "each image's top 3 classes"),
    ("Hamming", "share of wrong (image, class) entries at the threshold"),
    ("salient top-1", "share of this dataset's test images whose large, iconic object is the teacher's top "
                      "class on the whole image (the teacher stage prints the same on its own held-out scenes)"),
)


def bar_chart_svg(labels: Sequence[str], series: dict[str, Sequence[float]], width: int = 640,
                  bar_height: int = 14, vmax: float = 1.0) -> str:
    """Horizontal grouped bars: one group per label, one bar per series, values in [0, vmax]."""
    left, gap = 110, 8
    names = list(series)
    group = bar_height * len(names) + gap
    height = group * len(labels) + 30
    plot_w = width - left - 60
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">']
    for i, label in enumerate(labels):
        y0 = i * group
        parts.append(f'<text x="{left - 6}" y="{y0 + group / 2}" text-anchor="end">{html.escape(label)}</text>')
        for j, name in enumerate(names):
            v = float(series[name][i])
            if not np.isfinite(v):
                continue
            w = max(0.0, min(v, vmax)) / vmax * plot_w
            y = y0 + j * bar_height
            parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_height - 2}" '
                         f'fill="{COLOURS[j % len(COLOURS)]}"><title>{html.escape(name)}: {v:.3f}</title></rect>')
            parts.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_height - 4}">{v:.3f}</text>')
    legend_y = height - 10
    for j, name in enumerate(names):
        x = left + j * 120
        parts.append(f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" fill="{COLOURS[j % len(COLOURS)]}"/>'
                     f'<text x="{x + 14}" y="{legend_y}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _thumbnail(path: Path, size: int = 128) -> str:
    with Image.open(path) as im:
        im = im.convert("RGB").resize((size, size), Image.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _example_cells(classes, paths, truth, logits, n: int) -> str:
    if n == 0 or not len(paths):
        return ""
    probs = sigmoid(logits)
    cells = []
    for i in np.linspace(0, len(paths) - 1, min(n, len(paths))).astype(int):
        true = {classes[c] for c in np.flatnonzero(truth[i])}
        pred = {classes[c] for c in np.flatnonzero(probs[i] >= 0.5)}
        tags = []
        for c in sorted(true | pred, key=classes.index):
            kind = "hit" if c in true and c in pred else ("miss" if c in true else "false")
            tags.append(f'<span class="{kind}">{MARKS[kind]} {html.escape(c)} {probs[i, classes.index(c)]:.2f}'
                        '</span>')
        cells.append(f'<figure><img src="{_thumbnail(paths[i])}" alt="{html.escape(Path(paths[i]).name)}">'
                     f'<figcaption>{" ".join(tags) or "<i>nothing</i>"}</figcaption></figure>')
    return "".join(cells)


def line_chart_svg(curves: dict[str, tuple[Sequence[float], Sequence[float]]], x_label: str, y_label: str,
                   width: int = 480, height: int = 320) -> str:
    """Lines in the unit square, one per named curve (x, y), with axes, titles and a legend. Each line
    also has its own dash pattern, so the legend reads without colour."""
    left, bottom, top, right = 50, 40, 10, 120
    pw, ph = width - left - right, height - top - bottom
    dashes = ("", "6 3", "2 2", "8 3 2 3", "1 3", "10 5")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11" role="img" aria-label="{html.escape(y_label)} against '
             f'{html.escape(x_label)}">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>']
    for v in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{left + v * pw:.0f}" y="{top + ph + 14}" text-anchor="middle">{v:.1f}</text>'
                     f'<text x="{left - 6}" y="{top + (1 - v) * ph + 4:.0f}" text-anchor="end">{v:.1f}</text>')
    parts.append(f'<text x="{left + pw / 2:.0f}" y="{height - 6}" text-anchor="middle">{html.escape(x_label)}</text>'
                 f'<text x="12" y="{top + ph / 2:.0f}" transform="rotate(-90 12 {top + ph / 2:.0f})" '
                 f'text-anchor="middle">{html.escape(y_label)}</text>')
    for j, (name, (xs, ys)) in enumerate(curves.items()):
        colour, dash = COLOURS[j % len(COLOURS)], dashes[j % len(dashes)]
        pts = " ".join(f"{left + float(x) * pw:.1f},{top + (1 - float(y)) * ph:.1f}"
                       for x, y in zip(xs, ys, strict=True))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2" '
                     f'stroke-dasharray="{dash}"><title>{html.escape(name)}</title></polyline>')
        ly = top + 14 + 16 * j
        parts.append(f'<line x1="{left + pw + 10}" x2="{left + pw + 34}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" '
                     f'stroke-width="2" stroke-dasharray="{dash}"/><text x="{left + pw + 38}" y="{ly}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def precision_at_truth(truth: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Per image: the share of its true labels among its top-|y| classes (NaN without labels). [N]"""
    truth = np.asarray(truth) > 0
    n_true = truth.sum(1)
    order = np.argsort(-np.asarray(logits, np.float64), axis=1, kind="stable")
    ranked_truth = np.take_along_axis(truth, order, axis=1)
    hits = np.array([ranked_truth[i, :k].sum() for i, k in enumerate(n_true)], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_true > 0, hits / n_true, np.nan)


def rung_changes(truth: np.ndarray, rungs: dict[str, np.ndarray], n: int) -> tuple[list[int], list[int]]:
    """(most fixed, most broken): up to n images each, by the change of precision_at_truth from the first
    rung to the last, largest change first (ties by image order)."""
    names = list(rungs)
    delta = precision_at_truth(truth, rungs[names[-1]]) - precision_at_truth(truth, rungs[names[0]])
    valid = np.flatnonzero(np.isfinite(delta))
    fixed = [int(i) for i in valid[np.argsort(-delta[valid], kind="stable")] if delta[i] > 0][:n]
    broken = [int(i) for i in valid[np.argsort(delta[valid], kind="stable")] if delta[i] < 0][:n]
    return fixed, broken


def _rung_cell(classes: list[str], truth_row: np.ndarray, logits_row: np.ndarray) -> str:
    """The top-|y| classes of one rung for one image, marked ✓ (true) or + (not a label)."""
    k = max(1, int((truth_row > 0).sum()))
    top = np.argsort(-logits_row, kind="stable")[:k]
    return " ".join(f'<span class="{"hit" if truth_row[c] else "false"}">'
                    f'{MARKS["hit" if truth_row[c] else "false"]} {html.escape(classes[c])}</span>' for c in top)


def _changes_table(classes: list[str], paths: Sequence, truth: np.ndarray, rungs: dict[str, np.ndarray],
                   rows: list[int], title: str) -> str:
    if not rows:
        return f"<h3>{html.escape(title)}</h3><p><i>none</i></p>"
    head = "".join(f"<th>{html.escape(r)}</th>" for r in rungs)
    body = []
    for i in rows:
        true = ", ".join(html.escape(classes[c]) for c in np.flatnonzero(truth[i])) or "<i>none</i>"
        cells = "".join(f"<td>{_rung_cell(classes, truth[i], z[i])}</td>" for z in rungs.values())
        name = html.escape(Path(paths[i]).name)
        body.append(f'<tr><td><img class="thumb" src="{_thumbnail(paths[i], 64)}" alt="{name}">'
                    f"<br>{html.escape(Path(paths[i]).stem)}</td><td>{true}</td>{cells}</tr>")
    return (f"<h3>{html.escape(title)}</h3><table class=\"changes\"><tr><th>image</th><th>truth</th>{head}</tr>"
            + "".join(body) + "</table>")


def _params_html(run: dict) -> str:
    import yaml

    provenance = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                         for k, v in run.get("provenance", {}).items())
    summary = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                      for k, v in run.get("summary", {}).items())
    params = html.escape(yaml.safe_dump(run.get("params", {}), sort_keys=False))
    return (f"<table>{summary}{provenance}</table>"
            f"<details><summary>all params</summary><pre>{params}</pre></details>")


def _dataset_html(truth: np.ndarray | None, classes: list[str]) -> str:
    """The structure of the ground truth [N, C] (pipeline.label_stats): frequencies, labels per image, and the
    lift P(i | j) / P(i) of every pair as a shaded table (blue: together more than chance, orange: less)."""
    if truth is None or not len(truth):
        return ""
    stats = label_statistics(truth, classes)
    names = stats.classes
    lift = stats.lift

    def cell(i: int, j: int) -> str:
        v = lift[i, j]
        if i == j or not np.isfinite(v):
            return "<td></td>"
        shade = min(1.0, abs(np.log2(max(v, 1e-3))) / 2)  # full colour at ×4 or ×¼
        rgb = (0, 114, 178) if v >= 1 else (213, 94, 0)
        return (f'<td style="background: rgba({rgb[0]},{rgb[1]},{rgb[2]},{shade:.2f})" title="P({html.escape(names[i])}'
                f' | {html.escape(names[j])}) = {stats.cooccurrence[i, j]:.2f}">{v:.1f}</td>')

    header = "".join(f'<th class="vertical">{html.escape(n)}</th>' for n in names)
    body = "".join(f"<tr><th>{html.escape(names[i])}</th>{''.join(cell(i, j) for j in range(len(names)))}</tr>"
                   for i in range(len(names)))
    pairs = "".join(f"<li>{html.escape(a)} | {html.escape(b)}: {p:.2f} (×{x:.1f})</li>"
                    for a, b, p, x in stats.top_pairs(8))
    vmax = float(max(stats.frequency.max(), 1e-6))
    return (f"<h2>Dataset (train split ground truth)</h2>"
            f"<p>Class frequencies (commonest / rarest: ×{stats.tail_ratio:.1f}); images by labels per image: "
            f"{stats.labels_per_image_text}.</p>"
            f"{bar_chart_svg(names, {'share of images': list(stats.frequency)}, vmax=vmax)}"
            f"<p>Co-occurrence: lift P(row | column) / P(row), 1 = independent.</p>"
            f'<table class="cooccurrence"><tr><th></th>{header}</tr>{body}</table>'
            f"<p>Pairs that come together most:</p><ul>{pairs}</ul>")


def render_report(metrics: dict, classes: Sequence[str], per_class_ap: dict[str, np.ndarray], test_paths,
                  test_truth: np.ndarray, student_logits: np.ndarray, n_examples: int = 12,
                  pr_curves: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, run: dict | None = None,
                  train_paths: Sequence = (), train_truth: np.ndarray | None = None,
                  train_rungs: dict[str, np.ndarray] | None = None) -> str:
    """The report page. `run`: {"summary", "provenance", "params"} of this run; `pr_curves`: model →
    (recall, precision); `train_rungs`: rung → train logits, for the per-image view of label changes;
    `train_truth` [N, C]: also the dataset's statistics (pipeline.label_stats)."""
    classes = list(classes)
    ladder = metrics.get("labels", {})
    rows = "".join(
        f"<tr><td>{html.escape(m)}</td>" + "".join(f"<td>{r.get(k, float('nan')):.3f}</td>" for k in
                                                  ("map", "cf1", "of1", "cf1_top3", "of1_top3", "hamming")) + "</tr>"
        for m, r in metrics.get("test", {}).items())
    extra = []
    if "teacher" in metrics:
        extra.append("teacher salient top-1 (this dataset's test images): "
                     f"<b>{metrics['teacher']['salient_top1']:.3f}</b>")
    if "gap_closure" in metrics:
        extra.append(f"gap closure (student − zero-shot) / (ceiling − zero-shot): <b>{metrics['gap_closure']:.3f}</b>")
    changes = ""
    if train_rungs and train_truth is not None and len(train_paths) and n_examples:
        fixed, broken = rung_changes(train_truth, train_rungs, n_examples)
        first, last = list(train_rungs)[0], list(train_rungs)[-1]
        changes = (f"<h2>How labels change from rung to rung (train split)</h2>"
                   f"<p>Each cell lists a rung's top classes, as many as the image has labels: ✓ a true label, "
                   f"+ a class the image does not have. Images are ordered by the change of that share from "
                   f"<b>{html.escape(first)}</b> to <b>{html.escape(last)}</b>.</p>"
                   + _changes_table(classes, list(train_paths), train_truth, train_rungs, fixed, "Most fixed")
                   + _changes_table(classes, list(train_paths), train_truth, train_rungs, broken, "Most broken"))
    pr = (f"<h2>Precision-recall (test split, micro-averaged)</h2>{line_chart_svg(pr_curves, 'recall', 'precision')}"
          if pr_curves else "")
    definitions = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in DEFINITIONS)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mlpl report</title>
<style>
body {{ font-family: sans-serif; max-width: 1040px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
table.changes td, table.changes th {{ text-align: left; vertical-align: top; font-size: 12px; }}
figure {{ display: inline-block; width: 140px; margin: 6px; vertical-align: top; font-size: 11px; }}
figure img {{ width: 128px; height: 128px; image-rendering: pixelated; }}
img.thumb {{ width: 64px; height: 64px; image-rendering: pixelated; }}
.hit {{ color: #0072b2; }} .miss {{ color: #d55e00; text-decoration: line-through; }}
.false {{ color: #cc79a7; font-style: italic; }}
dt {{ font-weight: bold; }} dd {{ margin: 0 0 .5em 1.5em; }}
table.cooccurrence td, table.cooccurrence th {{ padding: 2px 4px; font-size: 10px; text-align: center; }}
th.vertical {{ writing-mode: vertical-rl; transform: rotate(180deg); }}
</style></head><body>
<h1>Multi-label pseudo-labels: results</h1>
<p>{"<br>".join(extra)}</p>
<h2>This run</h2>
{_params_html(run or {})}
<h2>Pseudo-label ladder (train split, mAP)</h2>
<p>Each rung is a label table of the pipeline, in stage order, scored against the ground truth it never saw.</p>
{bar_chart_svg(list(ladder), {"mAP": [v["map"] for v in ladder.values()]})}
<table><tr><th>table</th><th>mAP</th><th>inversions</th></tr>
{"".join(f"<tr><td>{k}</td><td>{v['map']:.3f}</td><td>{v.get('inversions', '')}</td></tr>" for k, v in ladder.items())}
</table>
<h2>Models (test split)</h2>
<table><tr><th>model</th><th>mAP</th><th>CF1</th><th>OF1</th><th>CF1@3</th><th>OF1@3</th><th>Hamming</th></tr>
{rows}</table>
{pr}
<h2>Per-class AP (test split)</h2>
{bar_chart_svg(classes, {m: list(v) for m, v in per_class_ap.items()})}
<h2>Examples (student, threshold 0.5)</h2>
<p><span class="hit">✓ correct</span> · <span class="miss">✗ missed</span> ·
<span class="false">+ false positive</span></p>
{_example_cells(classes, list(test_paths), test_truth, student_logits, n_examples)}
{changes}
{_dataset_html(train_truth, classes)}
<h2>Definitions</h2>
<dl>{definitions}</dl>
<p><small>The page is a function of the run's inputs alone (no date, no commit), so DVC can cache it; the
commit that records it in git is its provenance.</small></p>
</body></html>
"""
