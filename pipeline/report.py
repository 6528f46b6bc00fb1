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
# what the page calls each label table and model; the name of metrics.json and reports/plots/ in brackets
DISPLAY_NAMES = {"z0": "CLIP zero-shot, whole image", "tiles": "tiles", "crops": "random crops",
                 "cdul": "CDUL global-local", "cut": "cut: global + local views", "corrected": "corrected",
                 "refined": "refined by EM", "student": "student", "ceiling": "supervised ceiling",
                 "zero_shot": "CLIP zero-shot"}


def display_name(name: str) -> str:
    """'refined by EM (refined)': the reader's name with the code name it has in metrics.json."""
    shown = DISPLAY_NAMES.get(name, name.replace("_", " "))
    return shown if shown == name else f"{shown} ({name})"

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


def axis_floor(values: Sequence[float], step: float = 0.1, pad: float = 0.05) -> float:
    """Where a value axis starts so that differences of 0.01 show: `pad` below the smallest finite value,
    rounded down to a multiple of `step` (0 at least)."""
    finite_values = [float(v) for v in values if np.isfinite(v)]
    if not finite_values:
        return 0.0
    return max(0.0, float(np.floor(round((min(finite_values) - pad) / step, 9)) * step))


def bar_chart_svg(labels: Sequence[str], series: dict[str, Sequence[float]], width: int = 720,
                  bar_height: int = 18, vmax: float = 1.0, vmin: float = 0.0, title: str = "") -> str:
    """Horizontal grouped bars: one group per label, one bar per series, on a value axis from `vmin` to
    `vmax` with a tick and gridline every 0.05 of it (0.01 of difference is a few pixels at the default
    width), each bar's value written at its end. Text at 13 px: readable at 100 %."""
    font = 13
    left = 12 + int(0.62 * font * max((len(str(label)) for label in labels), default=4))
    gap, top = 10, 24 if title else 6
    names = list(series)
    group = bar_height * len(names) + gap
    plot_h = group * len(labels)
    height = top + plot_h + 24 + 18 * (vmin > 0) + 22 * (len(names) > 1) + 6
    plot_w = width - left - 60
    span = max(vmax - vmin, 1e-9)

    def x_of(v: float) -> float:
        return left + (min(max(v, vmin), vmax) - vmin) / span * plot_w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="{font}" role="img" '
             f'aria-label="{html.escape(title or "bar chart")}">']
    if title:
        parts.append(f'<text x="{left}" y="{font + 2}" font-weight="bold">{html.escape(title)}</text>')
    tick = 0.05 if span <= 0.5 else 0.1
    n_ticks = int(round(span / tick))
    for k in range(n_ticks + 1):
        v = vmin + k * tick
        x = x_of(v)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#ddd"/>'
                     f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#555">{v:.2f}</text>')
    if vmin > 0:  # say so: the bars do not start at zero
        parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h + 34}" text-anchor="middle" fill="#555">'
                     f'the axis starts at {vmin:.2f}</text>')
    for i, label in enumerate(labels):
        y0 = top + i * group
        parts.append(f'<text x="{left - 6}" y="{y0 + group / 2 + 2}" text-anchor="end">'
                     f'{html.escape(str(label))}</text>')
        for j, name in enumerate(names):
            v = float(series[name][i])
            if not np.isfinite(v):
                continue
            w = x_of(v) - left
            y = y0 + j * bar_height
            parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_height - 3}" '
                         f'fill="{COLOURS[j % len(COLOURS)]}"><title>{html.escape(name)}: {v:.3f}</title></rect>')
            parts.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_height - 6}">{v:.3f}</text>')
    if len(names) > 1:
        legend_y = top + plot_h + 38 + 18 * (vmin > 0)
        x = left
        for j, name in enumerate(names):
            parts.append(f'<rect x="{x}" y="{legend_y - 11}" width="12" height="12" '
                         f'fill="{COLOURS[j % len(COLOURS)]}"/>'
                         f'<text x="{x + 16}" y="{legend_y}">{html.escape(name)}</text>')
            x += 16 + int(0.62 * font * len(name)) + 24
    parts.append("</svg>")
    return "".join(parts)


def _thumbnail(path: Path, size: int = 128) -> str:
    with Image.open(path) as im:
        im = im.convert("RGB").resize((size, size), Image.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _example_cells(classes, paths, truth, logits, n: int, ids: Sequence[str] | None = None) -> str:
    if n == 0 or not len(paths):
        return ""
    ids = [Path(p).stem for p in paths] if ids is None else list(ids)
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
                     f'<figcaption><code>{html.escape(str(ids[i]))}</code><br>'
                     f'{" ".join(tags) or "<i>nothing</i>"}</figcaption></figure>')
    return "".join(cells)


def line_chart_svg(curves: dict[str, tuple[Sequence[float], Sequence[float]]], x_label: str, y_label: str,
                   width: int = 700, height: int = 360) -> str:
    """Lines in the unit square, one per named curve (x, y), with axes, titles and a legend. Each line
    also has its own dash pattern, so the legend reads without colour."""
    left, bottom, top, right = 56, 44, 10, 250
    pw, ph = width - left - right, height - top - bottom
    dashes = ("", "6 3", "2 2", "8 3 2 3", "1 3", "10 5")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="13" role="img" aria-label="{html.escape(y_label)} against '
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
        ly = top + 16 + 20 * j
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


def report_figures(metrics: dict, classes: Sequence[str], per_class_ap: dict[str, np.ndarray],
                   pr_curves: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, str]:
    """The page's charts by file name (reports/figures/): `ladder.svg`, the train label mAP of each rung on an
    axis that shows 0.01; `per_class_ap.svg`, the test AP of each class and model; `pr.svg`, the test
    precision-recall curves (with `pr_curves`)."""
    ladder = metrics.get("labels", {})
    maps = [v["map"] for v in ladder.values()]
    figures = {"ladder.svg": bar_chart_svg([display_name(k) for k in ladder], {"train mAP": maps},
                                           vmin=axis_floor(maps), title="Pseudo-label ladder (train split, mAP)")}
    aps = [float(v) for values in per_class_ap.values() for v in values]
    figures["per_class_ap.svg"] = bar_chart_svg(
        list(classes), {display_name(m): list(v) for m, v in per_class_ap.items()}, vmin=axis_floor(aps),
        title="Per-class AP (test split)")
    if pr_curves:
        figures["pr.svg"] = line_chart_svg({display_name(m): c for m, c in pr_curves.items()}, "recall", "precision")
    return figures


def standalone_svg(svg: str) -> str:
    """An inline chart as an SVG file of its own: XML declaration and a white background."""
    head, rest = svg.split(">", 1)
    return f'<?xml version="1.0" encoding="utf-8"?>\n{head}><rect width="100%" height="100%" fill="white"/>{rest}\n'


def headline_html(metrics: dict, run: dict | None) -> str:
    """The figures a reader quotes first: student, zero-shot and ceiling test mAP, gap closure, and the run
    they come from (known-label ratio and seed, dataset seed, where the scores were computed)."""
    test = metrics.get("test", {})
    figures = [f"{display_name(m)} <b>{test[m]['map']:.3f}</b>" for m in ("student", "zero_shot", "ceiling")
               if m in test]
    if "gap_closure" in metrics:
        figures.append(f"gap closure <b>{metrics['gap_closure']:.3f}</b>")
    params = (run or {}).get("params", {})
    run_facts = [f"{k} {params[k]}" for k in ("ratio", "seed") if k in params]
    if isinstance(params.get("dataset"), dict) and "seed" in params["dataset"]:
        run_facts.append(f"dataset seed {params['dataset']['seed']}")
    scores = metrics.get("scores", {})
    if scores:
        run_facts.append("scores in " + " on ".join(str(scores[k]) for k in ("precision", "device") if k in scores)
                         + (f" ({scores['cpu']})" if "cpu" in scores else ""))
    return (f'<p class="headline">Test mAP: {" · ".join(figures)}</p>'
            + (f'<p class="run">{html.escape(" · ".join(run_facts))}</p>' if run_facts else ""))


def render_report(metrics: dict, classes: Sequence[str], per_class_ap: dict[str, np.ndarray], test_paths,
                  test_truth: np.ndarray, student_logits: np.ndarray, n_examples: int = 12,
                  pr_curves: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, run: dict | None = None,
                  train_paths: Sequence = (), train_truth: np.ndarray | None = None,
                  train_rungs: dict[str, np.ndarray] | None = None, test_ids: Sequence[str] | None = None,
                  figures: dict[str, str] | None = None) -> str:
    """The report page. `run`: {"summary", "provenance", "params"} of this run; `pr_curves`: model →
    (recall, precision); `train_rungs`: rung → train logits, for the per-image view of label changes;
    `train_truth` [N, C]: also the dataset's statistics (pipeline.label_stats); `test_ids`: the example images'
    ids (their file names without suffix by default); `figures`: report_figures' charts, made here if None."""
    classes = list(classes)
    ladder = metrics.get("labels", {})
    figures = report_figures(metrics, classes, per_class_ap, pr_curves) if figures is None else figures
    rows = "".join(
        f"<tr><td>{html.escape(display_name(m))}</td>" + "".join(f"<td>{r.get(k, float('nan')):.3f}</td>" for k in
                                                  ("map", "cf1", "of1", "cf1_top3", "of1_top3", "hamming")) + "</tr>"
        for m, r in metrics.get("test", {}).items())
    extra = []
    if "gap_closure" in metrics:
        extra.append("gap closure = (student − zero-shot) / (ceiling − zero-shot), in test mAP")
    if "teacher" in metrics:
        extra.append("teacher salient top-1 (this dataset's test images): "
                     f"<b>{metrics['teacher']['salient_top1']:.3f}</b>")
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
    pr = f"<h2>Precision-recall (test split, micro-averaged)</h2>{figures['pr.svg']}" if "pr.svg" in figures else ""
    definitions = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in DEFINITIONS)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mlpl report</title>
<style>
body {{ font-family: sans-serif; max-width: 1040px; margin: 2em auto; color: #222; }}
p.headline {{ font-size: 20px; margin-bottom: 0; }} p.run {{ color: #555; margin-top: 4px; }}
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
{headline_html(metrics, run)}
<p>{"<br>".join(extra)}</p>
<h2>This run</h2>
{_params_html(run or {})}
<h2>Pseudo-label ladder (train split, mAP)</h2>
<p>Each rung is a label table of the pipeline, in stage order, scored against the ground truth it never saw.</p>
{figures["ladder.svg"]}
<table><tr><th>table</th><th>mAP</th><th>inversions</th></tr>
{"".join(f"<tr><td>{html.escape(display_name(k))}</td><td>{v['map']:.3f}</td><td>{v.get('inversions', '')}</td></tr>"
         for k, v in ladder.items())}
</table>
<h2>Models (test split)</h2>
<table><tr><th>model</th><th>mAP</th><th>CF1</th><th>OF1</th><th>CF1@3</th><th>OF1@3</th><th>Hamming</th></tr>
{rows}</table>
{pr}
<h2>Per-class AP (test split)</h2>
{figures["per_class_ap.svg"]}
<h2>Examples (student, threshold 0.5)</h2>
<p><span class="hit">✓ correct</span> · <span class="miss">✗ missed</span> ·
<span class="false">+ false positive</span></p>
{_example_cells(classes, list(test_paths), test_truth, student_logits, n_examples, test_ids)}
{changes}
{_dataset_html(train_truth, classes)}
<h2>Definitions</h2>
<dl>{definitions}</dl>
<p><small>The page is a function of the run's inputs alone (no date, no commit), so DVC can cache it; the
commit that records it in git is its provenance.</small></p>
</body></html>
"""
