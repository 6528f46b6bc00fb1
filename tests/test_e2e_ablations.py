"""Ablations through the real `dvc` CLI on the tiny project (tests/conftest.py's `project`): each reruns the
stages its params and their outputs reach, never the scores, and is listed beside the baseline."""

import csv
import io

import pytest

from benchmarks.project import sh, stages_run

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("change, expected", [
    # two changes that reach the same stages share one run (each is ~45 s of the 12-minute test budget):
    # hard correction, and g2netpl, which moves the pseudo labels after every epoch, so even the one-epoch
    # tiny run changes the refined table and evaluate must rerun (`correct` reads `method` too: its
    # transfers are methods)
    ("correct.method=hard -S method=g2netpl", {"validate", "correct", "sew", "distill", "evaluate"}),
    ("sew.max_overlays=0", {"validate", "features", "sew", "ceiling", "distill", "evaluate"}),
    # training only (the paper's composites, through the tower): the features are reused
    ("sew.composites=pixels", {"validate", "sew", "ceiling", "distill", "evaluate"}),
    ("distill.student=cdul", {"validate", "distill", "evaluate"}),  # CDUL's student, from init's labels
    # another world: its images, the teacher trained on it and their scores (the stages after them follow
    # their deps, as every case above shows; running them too would double the test's ~90 s)
    ("dataset.scenes=contexts score", {"validate", "prepare", "teacher", "score"}),
])
def test_method_ablations_reuse_cached_scores(project, change, expected):
    r = sh(f"dvc exp run -S {change}", project)  # `change` may end with the stage to run up to
    assert stages_run(r.stdout) == expected, r.stdout
    rows = list(csv.reader(io.StringIO(sh("dvc exp show --no-pager --csv", project).stdout)))
    header = rows[0]
    assert "test.student.map" in header
    for setting in change.split(" -S "):
        key, value = setting.split()[0].split("=")
        assert key in header
        assert value in {row[header.index(key)] for row in rows[1:]}  # the ablation is listed next to the baseline
