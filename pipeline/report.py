"""reports/report.html: one self-contained page (inline SVG charts, embedded example images)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.logits import sigmoid

COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2")


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
            tags.append(f'<span class="{kind}">{html.escape(c)} {probs[i, classes.index(c)]:.2f}</span>')
        cells.append(f'<figure><img src="{_thumbnail(paths[i])}" alt="{html.escape(Path(paths[i]).name)}">'
                     f'<figcaption>{" ".join(tags) or "<i>nothing</i>"}</figcaption></figure>')
    return "".join(cells)


def render_report(metrics: dict, classes: Sequence[str], per_class_ap: dict[str, np.ndarray], test_paths,
                  test_truth: np.ndarray, student_logits: np.ndarray, n_examples: int = 12) -> str:
    classes = list(classes)
    ladder = metrics.get("labels", {})
    rows = "".join(
        f"<tr><td>{html.escape(m)}</td>" + "".join(f"<td>{r.get(k, float('nan')):.3f}</td>" for k in
                                                  ("map", "cf1", "of1", "cf1_top3", "of1_top3", "hamming")) + "</tr>"
        for m, r in metrics.get("test", {}).items())
    extra = []
    if "teacher" in metrics:
        extra.append(f"teacher salient top-1: <b>{metrics['teacher']['salient_top1']:.3f}</b>")
    if "gap_closure" in metrics:
        extra.append(f"gap closure (student − zero-shot) / (ceiling − zero-shot): <b>{metrics['gap_closure']:.3f}</b>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mlpl report</title>
<style>
body {{ font-family: sans-serif; max-width: 960px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
figure {{ display: inline-block; width: 140px; margin: 6px; vertical-align: top; font-size: 11px; }}
figure img {{ width: 128px; height: 128px; image-rendering: pixelated; }}
.hit {{ color: #2a7d2a; }} .miss {{ color: #c0392b; text-decoration: line-through; }} .false {{ color: #b36b00; }}
</style></head><body>
<h1>Multi-label pseudo-labels: results</h1>
<p>{"<br>".join(extra)}</p>
<h2>Pseudo-label ladder (train split, mAP)</h2>
<p>Each rung is a label table of the pipeline, scored against the ground truth it never saw.</p>
{bar_chart_svg(list(ladder), {"mAP": [v["map"] for v in ladder.values()]})}
<table><tr><th>table</th><th>mAP</th><th>inversions</th></tr>
{"".join(f"<tr><td>{k}</td><td>{v['map']:.3f}</td><td>{v.get('inversions', '')}</td></tr>" for k, v in ladder.items())}
</table>
<h2>Models (test split)</h2>
<table><tr><th>model</th><th>mAP</th><th>CF1</th><th>OF1</th><th>CF1@3</th><th>OF1@3</th><th>Hamming</th></tr>
{rows}</table>
<h2>Per-class AP (test split)</h2>
{bar_chart_svg(classes, {m: list(v) for m, v in per_class_ap.items()})}
<h2>Examples (student, threshold 0.5)</h2>
<p><span class="hit">correct</span> · <span class="miss">missed</span> · <span class="false">false positive</span></p>
{_example_cells(classes, list(test_paths), test_truth, student_logits, n_examples)}
</body></html>
"""
