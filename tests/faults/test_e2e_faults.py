"""Issue 6, bad input, end to end: one dataset with every bad kind through `dvc repro prepare`, `mlpl teacher`
and `mlpl score`; then an all-bad dataset and `on_bad_input: fail`, which fail cleanly and keep finished work."""

from collections import Counter

import numpy as np
import pytest

from tests.faults.builders import FAULTS
from tests.faults.fault_table import FaultRun, markdown, outcome, run_faults

pytestmark = pytest.mark.e2e

KEPT = [f.file for f in FAULTS if f.action != "excluded"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> FaultRun:
    return run_faults(tmp_path_factory.mktemp("faults"))


def test_the_manifest_excludes_exactly_the_bad_images(run):
    assert run.image_ids == KEPT  # table order; the duplicate id keeps its first row


def test_every_bad_image_is_reported_by_id_with_its_kind(run):
    rows = [(i["image_id"], i["path"], i["kind"], i["action"]) for i in run.issues if i["kind"] != "no_positives"]
    assert sorted(rows) == sorted((f.file, f.file, f.kind, f.action) for f in FAULTS if f.kind)
    assert all(i["detail"] for i in run.issues)


def test_converted_and_misnamed_images_score_fine(run):
    assert run.scores.shape == (len(KEPT), 4) and np.isfinite(run.scores).all()
    for fault in FAULTS:
        if fault.action in ("converted", "kept"):
            assert outcome(run, fault)[1:] == ("yes", "yes"), fault.name


def test_prepare_prints_the_counts(run):
    kinds = Counter(f.kind for f in FAULTS if f.kind) + Counter(["no_positives"])
    actions = Counter(f.action for f in FAULTS if f.action) + Counter(["kept"])
    line = f"data issues: {actions['excluded']} excluded, {actions['converted']} converted, {actions['kept']} kept ("
    assert line in run.prepare.stdout
    for kind, n in kinds.items():
        assert f"{kind} {n}" in run.prepare.stdout
    assert f"imported {len(KEPT) - 2} train + 2 test images, 4 classes" in run.prepare.stdout


def test_class_without_positives_is_kept_and_reported(run):
    [row] = [i for i in run.issues if i["kind"] == "no_positives"]
    assert (row["image_id"], row["action"]) == ("", "kept") and "'cross'" in row["detail"]


def test_empty_dataset_fails_clearly_and_keeps_finished_work(run):
    assert run.empty.returncode == 2 and "Traceback" not in run.empty.stderr
    assert "nothing to do: none of the 11 listed image(s) is usable" in run.empty.stderr
    assert "reports/data_issues.parquet" in run.empty.stderr
    assert len(run.empty_issues) == 11  # the report says why
    assert run.digest_after_failures == run.outputs_digest  # manifest and scores of the good run untouched


def test_on_bad_input_fail_refuses_and_keeps_finished_work(run):
    assert run.strict.returncode == 2 and "Traceback" not in run.strict.stderr
    assert "dataset.on_bad_input is 'fail'" in run.strict.stderr and "12 excluded" in run.strict.stderr
    assert run.digest_after_failures == run.outputs_digest


def test_fault_table_has_a_row_per_fault(run):
    table = markdown(run)
    assert all(f"| {f.name} |" in table for f in FAULTS) and "OUTPUTS CHANGED" not in table
