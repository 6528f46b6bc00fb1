"""Sharing cached results, exactly as the README prints it: clone A pushes the DVC cache to a
local-directory remote and dvc.lock to git; clone B pulls and reproduces nothing — in particular it
never runs the teacher over the images again (`score`)."""

import json
import re

import pytest

from benchmarks.project import ROOT, make_project, sh, stages_run

pytestmark = pytest.mark.e2e

TEAMMATE = "# on a teammate's machine"


def readme_recipe() -> tuple[list[str], list[str]]:
    """The README's sharing block as (commands on the first machine, commands on the teammate's)."""
    section = ROOT.joinpath("README.md").read_text().split("## Sharing cached scores with teammates")[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    first, teammate = block.split(TEAMMATE)
    teammate = teammate.split("\n", 1)[1]  # the rest of the comment line
    commands = [[line.split("  #")[0].strip() for line in part.splitlines()] for part in (first, teammate)]
    return tuple([c for c in cmds if c and not c.startswith("#")] for cmds in commands)


def test_pull_reuses_scores_and_results(tmp_path, tiny_build):
    first, teammate = readme_recipe()
    assert any("dvc.lock" in c and "git push" in c for c in first), first
    remote, origin = tmp_path / "remote", tmp_path / "origin.git"
    (tmp_path / "a").mkdir()
    # A fresh project with the session build's DVC cache: the recipe's `dvc repro` on the first machine checks
    # its outputs out of the run cache rather than training and scoring again; what is pushed, pulled and
    # rerun is as printed.
    a = tiny_build.seed_cache(make_project(tmp_path / "a"))
    sh(f"git init -q --bare {origin} && git remote add origin {origin} && git push -q -u origin HEAD", a)
    b = tmp_path / "b"
    sh(f"git clone -q {origin} {b}", tmp_path)  # the teammate's clone, from before the results
    for cmd in first:
        sh(cmd.replace("/mnt/team/mlpl-cache", str(remote)), a)
    assert any(remote.rglob("*"))

    for cmd in teammate:
        out = sh(cmd, b).stdout
        if "dvc repro" in cmd:
            assert stages_run(out) == set(), out  # everything pulled: nothing reruns
            recompute_reports(a, b)
        if "exp run" in cmd:  # an ablation starts from the pulled scores
            assert "score" not in stages_run(out) and "mask" in stages_run(out), out


def recompute_reports(a, b):
    """Recompute the reports in B from the pulled artifacts: only `evaluate` may run, never `score`."""
    sh("rm -rf reports/metrics.json reports/plots reports/report.html reports/figures", b)  # evaluate's outputs only
    r = sh("dvc repro", b)
    assert stages_run(r.stdout) == {"evaluate"}, r.stdout
    assert "scored" not in r.stdout  # `score` prints "scored N images × V views" whenever it runs the teacher
    assert (b / "data" / "scores.zarr" / "global" / "zarr.json").is_file()
    metrics_a = json.loads((a / "reports" / "metrics.json").read_text())
    metrics_b = json.loads((b / "reports" / "metrics.json").read_text())
    assert metrics_a == metrics_b
