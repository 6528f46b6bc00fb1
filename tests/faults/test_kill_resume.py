"""Preemption, end to end: `mlpl score` and `mlpl sew` SIGKILLed at random points, then rerun, end with the
bytes and metrics of an uninterrupted run. And: two experiments queued in parallel equal the same two run
one after the other."""

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
import yaml

from pipeline.storage import Table
from tests.dvcproject import env, make_project, sh, stages_run

KILLS = 5


def tree_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny project with a few sew epochs (so sew has checkpoints to resume from), reproduced once."""
    project = make_project(tmp_path_factory.mktemp("kill"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sew"]["epochs"] = 6
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git commit -qam 'six sew epochs' && dvc repro", project)
    return project


def kill_repeatedly(project, command: str, kills: int, seed: int) -> tuple[int, str]:
    """Start `command`, SIGKILL it after a random delay within its uninterrupted run time, `kills` times
    (each run continuing the last), then let it finish. Returns (kills that landed, final output)."""
    started = time.time()
    sh(command, project)  # an uninterrupted run, to time it (its outputs are replaced below)
    wall = time.time() - started
    rng = np.random.default_rng(seed)
    landed = 0
    for _ in range(kills):
        proc = subprocess.Popen(command, shell=True, cwd=project, env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(float(rng.uniform(0.4, 0.95)) * wall)
        if proc.poll() is None:
            landed += 1
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return landed, sh(command, project).stdout


def test_score_killed_five_times_resumes_byte_identical(project):
    store = project / "data" / "scores.zarr"
    reference = tree_bytes(store)
    shutil.rmtree(store)
    work = project / "data" / ".scores.work"

    landed, _ = kill_repeatedly(project, "mlpl score", KILLS, seed=1)
    assert landed >= 3, "the kills should interrupt scoring"
    assert tree_bytes(store) == reference
    assert not work.exists()


def test_sew_killed_five_times_resumes_to_the_same_adapter_and_metrics(project):
    refined_before = Table(project / "data" / "labels" / "refined.parquet").column("z")
    adapter_before = torch.load(project / "data" / "models" / "adapter.pt", weights_only=True)["state_dict"]
    metrics_before = json.loads((project / "reports" / "metrics.json").read_text())
    landed, _ = kill_repeatedly(project, "mlpl sew", KILLS, seed=2)
    assert landed >= 3
    assert np.array_equal(Table(project / "data" / "labels" / "refined.parquet").column("z"), refined_before)
    adapter = torch.load(project / "data" / "models" / "adapter.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(adapter[k], adapter_before[k]) for k in adapter_before)
    assert not (project / "data" / ".sew.work").exists()
    r = sh("dvc repro", project)
    assert stages_run(r.stdout) <= {"distill", "evaluate"}  # same outputs: nothing else reruns
    assert json.loads((project / "reports" / "metrics.json").read_text()) == metrics_before


def test_a_killed_sew_resumes_from_its_checkpoint(project):
    """At least one kill lands after a checkpoint: the rerun says it resumed."""
    proc = subprocess.Popen("mlpl sew", shell=True, cwd=project, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    state = project / "data" / ".sew.work" / "state.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not state.exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "sew finished before its first checkpoint"
    r = sh("mlpl sew", project)
    assert "resuming from" in r.stdout + r.stderr


def named_metrics(node, out=None) -> dict:
    """{experiment name: metrics} from `dvc exp show --json`, whatever its nesting."""
    out = {} if out is None else out
    if isinstance(node, dict):
        data = node.get("data") or {}
        if node.get("name") and isinstance(data, dict) and data.get("metrics"):
            out[node["name"]] = data["metrics"]["reports/metrics.json"]["data"]
        for value in node.values():
            named_metrics(value, out)
    elif isinstance(node, list):
        for value in node:
            named_metrics(value, out)
    return out


def test_parallel_queue_equals_sequential_runs(project):
    sh("git add -A && git commit -qm base --allow-empty", project)
    for ratio in ("2", "4"):
        sh(f"dvc exp run --queue -S ratio=0.{ratio} -n par-{ratio}", project)
    sh("dvc queue start -j 2", project)
    deadline = time.time() + 900
    status = ""
    while time.time() < deadline:
        status = sh("dvc queue status", project).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert "Failed" not in status and "Success" in status, status
    for ratio in ("2", "4"):
        sh(f"dvc exp run -S ratio=0.{ratio} -n seq-{ratio}", project)
        sh("git checkout -q -- params.yaml", project)
    metrics = named_metrics(json.loads(sh("dvc exp show --json", project).stdout))
    for ratio in ("2", "4"):
        assert metrics[f"par-{ratio}"] == metrics[f"seq-{ratio}"], ratio
    assert metrics["par-2"] != metrics["par-4"]  # the ratio matters: the comparison is not vacuous
