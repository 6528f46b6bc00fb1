"""`mlpl compare`: the experiments of this project side by side — the params that differ and the figures
that matter — from `dvc exp show --json`, as a Markdown table (and an HTML page with --html).

`dvc exp show` itself prints every param and metric (well over a hundred columns here); this keeps
the ones a reader compares.
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path

from pipeline.storage import atomic_path

# the figures of reports/metrics.json shown for every experiment, in ladder order
FIGURES = ("labels.cut.map", "labels.corrected.map", "labels.refined.map", "test.zero_shot.map",
           "test.student.map", "test.ceiling.map", "gap_closure", "transfer.raised_right", "transfer.lowered_right")
# where the scores were computed (reports/metrics.json `scores`): figures differ by machine, not only by params
MACHINE = ("scores.precision", "scores.cpu")
SAME_PARAMS = "same params"


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(rev: str) -> str:
    """A commit's short hash; other revs (`workspace`) as they are."""
    return rev[:7] if len(rev) == 40 and all(c in "0123456789abcdef" for c in rev) else rev


def experiment_rows(shown: list) -> list[tuple[str, dict, dict]]:
    """(name, flat params, flat metrics) of the workspace, each baseline commit and its experiments."""
    rows = []

    def add(name: str, data: dict | None) -> None:
        data = data or {}
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        metrics = ((data.get("metrics") or {}).get("reports/metrics.json") or {}).get("data") or {}
        rows.append((name, flatten(params), flatten(metrics)))

    for base in shown:
        add(base.get("name") or _short(str(base.get("rev", "?"))), base.get("data"))
        for exp in base.get("experiments") or []:
            for rev in exp.get("revs") or []:
                add(exp.get("name") or _short(str(rev.get("rev", "?"))), rev.get("data"))
    return rows


def compare_table(rows: list[tuple[str, dict, dict]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells: the experiment, each param whose value differs between rows (or one `params` column
    saying "same params" where none does), the machine the scores came from where rows differ in it, the
    FIGURES."""
    differing = [k for k in dict.fromkeys(k for _, p, _ in rows for k in p)
                 if len({json.dumps(p.get(k), sort_keys=True) for _, p, _ in rows}) > 1]
    machine = [k for k in MACHINE if len({str(m.get(k, "")) for _, _, m in rows}) > 1]
    figures = [f for f in FIGURES if any(f in m for _, _, m in rows)]
    header = ["experiment", *(differing or ["params"]), *machine, *figures]
    body = [[name, *((str(p.get(k, "")) for k in differing) if differing else [SAME_PARAMS]),
             *(str(m.get(k, "")) for k in machine),
             *(f"{m[f]:.4f}" if isinstance(m.get(f), (int, float)) else "" for f in figures)]
            for name, p, m in rows]
    return header, body


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def html_page(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>mlpl: experiments</title><style>'
            "body { font-family: sans-serif; margin: 2em; } table { border-collapse: collapse; } "
            "td, th { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; } "
            "td:first-child, th:first-child { text-align: left; }</style></head><body>"
            f"<h1>Experiments</h1><p>The params that differ, and train label / test mAP.</p>"
            f"<table><tr>{head}</tr>{rows}</table></body></html>\n")


def run(html_out: Path | None) -> None:
    # this interpreter's dvc, whether or not its environment is on PATH
    r = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        raise ValueError(f"dvc exp show failed: {r.stderr.strip() or r.stdout.strip()}")
    header, body = compare_table(experiment_rows(json.loads(r.stdout)))
    print(markdown(header, body))
    if html_out is not None:
        with atomic_path(html_out) as tmp:
            Path(tmp).write_text(html_page(header, body))
        print(f"→ {html_out}")
