"""Sharing cached results: clone A pushes to a local-directory DVC remote, clone B pulls and reproduces
nothing — in particular it never runs the teacher over the images again (`score`)."""

import json

from tests.dvcproject import make_project, sh, stages_run


def test_pull_reuses_scores_and_results(tmp_path):
    remote = tmp_path / "remote"
    (tmp_path / "a").mkdir()
    a = make_project(tmp_path / "a")
    sh(f"dvc remote add -d shared {remote} && git add -A && git commit -qm remote", a)
    sh("dvc repro", a)
    sh("dvc push --run-cache && git add -A && git commit -qm results", a)
    assert any(remote.rglob("*"))

    b = tmp_path / "b"
    sh(f"git clone -q {a} {b}", tmp_path)
    sh("dvc pull --run-cache", b)
    assert stages_run(sh("dvc repro", b).stdout) == set()  # everything pulled: no stage reruns
    # Recompute the reports in B from the pulled artifacts: only `evaluate` may run, never `score`.
    sh("rm -rf reports/metrics.json reports/plots reports/report.html", b)  # evaluate's outputs only
    r = sh("dvc repro", b)
    assert stages_run(r.stdout) == {"evaluate"}, r.stdout
    assert "scored" not in r.stdout  # `score` prints "scored N images × V views" whenever it runs the teacher
    assert (b / "data" / "scores.zarr" / "global" / "zarr.json").is_file()
    metrics_a = json.loads((a / "reports" / "metrics.json").read_text())
    metrics_b = json.loads((b / "reports" / "metrics.json").read_text())
    assert metrics_a == metrics_b

    # An ablation in B reuses the pulled scores.
    r = sh("dvc exp run -S correct.beta=2", b)
    assert "score" not in stages_run(r.stdout) and "correct" in stages_run(r.stdout)
