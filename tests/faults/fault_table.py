"""The fault table of issue 6: every kind of bad input tried for real through `dvc`/`mlpl`, and what happened.

    PYTHONPATH=. python -m tests.faults.fault_table     # prints the markdown table (~1 min on 2 cores)

One folder dataset holds every bad kind of tests/faults/builders.py next to good images. `dvc repro prepare`
imports it, `mlpl teacher` + `mlpl score` score what was kept. Then two runs that must fail without touching
that finished work: a dataset where every image is bad (nothing to do) and `dataset.on_bad_input: fail`.
tests/faults/test_e2e_faults.py runs this same scenario and checks every cell.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from benchmarks.project import make_project, sh
from tests.dvcproject import score_with_tiny_teacher
from tests.faults.builders import CLASSES, FAULTS, MAX_PIXELS, Fault, folder_dataset

MANIFEST = Path("data/prepared/manifest.parquet")
REPORT = Path("reports/data_issues.parquet")


@dataclass
class FaultRun:
    project: Path
    prepare: subprocess.CompletedProcess  # `dvc repro prepare` on the mixed dataset
    issues: list[dict]  # its reports/data_issues.parquet rows
    image_ids: list[str]  # its manifest
    scores: np.ndarray  # global [N, C] logits of `mlpl score` on that manifest
    outputs_digest: str  # manifest + score store after the good run
    empty: subprocess.CompletedProcess  # `mlpl prepare` when every listed image is bad
    empty_issues: list[dict]
    strict: subprocess.CompletedProcess  # `mlpl prepare` with dataset.on_bad_input: fail
    digest_after_failures: str


def digest(project: Path) -> str:
    """sha256 over the manifest and every file of the score store: unchanged means finished work was kept."""
    h = hashlib.sha256()
    for path in [project / MANIFEST, *sorted(p for p in (project / "data" / "scores.zarr").rglob("*") if p.is_file())]:
        h.update(str(path.relative_to(project)).encode() + path.read_bytes())
    return h.hexdigest()


def set_dataset(project: Path, **values) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_faults(base: Path) -> FaultRun:
    root, table = folder_dataset(base / "dataset")
    (base / "project").mkdir()
    project = make_project(base / "project")
    set_dataset(project, format="folder", root=str(root), labels=str(table), classes=CLASSES, max_pixels=MAX_PIXELS)
    prepare = sh("dvc repro prepare", project)
    issues = pq.read_table(project / REPORT).to_pylist()
    image_ids = [str(v) for v in pq.read_table(project / MANIFEST).column("image_id").to_pylist()]
    scores = np.asarray(score_with_tiny_teacher(project, base)["global"][:], np.float32)
    before = digest(project)

    all_bad = base / "all_bad.csv"  # only rows that are excluded on their own (a duplicate needs its first row)
    all_bad.write_text("image,labels,split\n" + "".join(
        f"{f.file},{f.labels},{f.split}\n" for f in FAULTS if f.action == "excluded" and f.kind != "duplicate_id"))
    set_dataset(project, labels=str(all_bad))
    empty = sh("mlpl prepare", project, check=False)
    empty_issues = pq.read_table(project / REPORT).to_pylist()
    set_dataset(project, labels=str(table), on_bad_input="fail")
    strict = sh("mlpl prepare", project, check=False)
    return FaultRun(project, prepare, issues, image_ids, scores, before, empty, empty_issues, strict, digest(project))


def outcome(run: FaultRun, fault: Fault) -> tuple[str, str, str]:
    """(reported kind → action, in the manifest, scored) for one row of the dataset."""
    reported = [i for i in run.issues if i["path"] == fault.file and i["kind"] == fault.kind]
    cell = f"`{reported[0]['kind']}` → {reported[0]['action']}" if reported else "—"
    kept = fault.action != "excluded" and fault.file in run.image_ids
    scored = kept and bool(np.isfinite(run.scores[run.image_ids.index(fault.file)]).all())
    return cell, "yes" if kept else "no", "yes" if scored else "no"


def markdown(run: FaultRun) -> str:
    lines = ["| input | reported (`kind` → action) | in manifest | scored |", "|---|---|---|---|"]
    for fault in FAULTS:
        lines.append("| {} | {} | {} | {} |".format(fault.name, *outcome(run, fault)))
    no_pos = [i for i in run.issues if i["kind"] == "no_positives"]
    lines.append(f"| class with no positive train image | {', '.join(i['detail'] for i in no_pos)}: "
                 "`no_positives` → kept | class kept | AP skipped |")
    kept = "earlier manifest and scores kept" if run.digest_after_failures == run.outputs_digest else "OUTPUTS CHANGED"
    n_empty = len(run.empty_issues)
    lines.append(f"| every listed image bad (empty dataset) | exit {run.empty.returncode}, \"nothing to do\", "
                 f"{n_empty} rows in the report | {kept} | — |")
    lines.append(f"| `dataset.on_bad_input: fail` on the mixed dataset | exit {run.strict.returncode}, counts named "
                 f"| {kept} | — |")
    summary = next(line for line in run.prepare.stdout.splitlines() if line.startswith("data issues:"))
    return "\n".join(lines) + f"\n\n`dvc repro prepare` printed: `{summary}`\n"


def main() -> None:  # pragma: no cover
    with tempfile.TemporaryDirectory() as tmp:
        sys.stdout.write(markdown(run_faults(Path(tmp))))


if __name__ == "__main__":  # pragma: no cover
    main()
