"""`mlpl` help and version: what a user reads first."""

import re
from importlib.metadata import version

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
