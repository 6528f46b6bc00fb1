"""`mlpl` help and version: what a user reads first."""

import re
import sys
from importlib.metadata import version
from pathlib import Path

import yaml
from typer.testing import CliRunner

from benchmarks.project import ROOT
from stages.cli import app


def test_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"mlpl {version('mlpl')}"


def test_help_lists_stage_commands_in_dag_order_without_placeholders():
    out = CliRunner().invoke(app, ["--help"]).output
    listed = re.findall(r"^  (\w+)\s", out.split("Commands:")[1], flags=re.M)
    dag = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert [c for c in listed if c in dag] == dag
    assert "<bool>" not in out
    usage = CliRunner().invoke(app, ["predict", "--help"], prog_name="mlpl").output.splitlines()[0]
    assert usage.endswith(" predict [OPTIONS] IMAGES_DIR")


def test_mlpl_runs_the_code_of_the_checkout_it_runs_in(tmp_path):
    """A stage in a DVC experiment's workspace (a queued run's copy under .dvc/tmp/exps) or a benchmark's
    project copy runs that copy's code, the files DVC hashed for it, not the editable install's."""
    import shutil
    import subprocess

    from stages.cli import workspace_code

    root = Path(__file__).resolve().parents[1]
    copy = tmp_path / "copy"
    copy.mkdir()
    for rel in ("dvc.yaml", "params.yaml"):
        shutil.copy2(root / rel, copy / rel)
    for package in ("stages", "pipeline"):
        shutil.copytree(root / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    cli = copy / "stages" / "cli.py"
    original = """typer.echo(f"mlpl {version('mlpl')}")"""
    assert original in cli.read_text()
    cli.write_text(cli.read_text().replace(original, 'typer.echo("mlpl of the copy")'))
    mlpl = str(Path(sys.executable).parent / "mlpl")
    assert subprocess.run([mlpl, "--version"], cwd=copy, capture_output=True, text=True).stdout == "mlpl of the copy\n"
    elsewhere = subprocess.run([mlpl, "--version"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert elsewhere.startswith("mlpl ") and "copy" not in elsewhere
    assert workspace_code(copy) == copy.resolve() and workspace_code(root) is None and workspace_code(tmp_path) is None
    linked = tmp_path / "linked"  # a project whose code links to this checkout's: already running, no exec loop
    linked.mkdir()
    shutil.copy2(root / "dvc.yaml", linked / "dvc.yaml")
    for package in ("stages", "pipeline"):
        (linked / package).symlink_to(root / package)
    assert workspace_code(linked) is None
    assert subprocess.run([mlpl, "--version"], cwd=linked, capture_output=True, text=True, timeout=60).returncode == 0
