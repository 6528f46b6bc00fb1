"""A copy of this project in a new git repo, driven by the real CLIs: what the benchmarks and the end-to-end
tests run DVC in."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_PARAMS = ROOT / "tests" / "tiny_params.yaml"  # the tiny config the end-to-end tests run on
ANSWERS = "data/answers.parquet"  # an input under data/ (a person's answers, empty as committed), not an output


def env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TQDM_DISABLE": "1",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(cmd: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env())
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def copy_project(dest: Path, params: Path, shell: Callable[[str, Path], object], config: Path | None = None) -> Path:
    """Copy the tracked (and untracked, unignored) files, not data (but the answers file), reports or dvc.lock,
    with `params` as params.yaml (and a config of configs/ applied to it, as `mlpl config --write` does), and
    commit them in a new repo at `dest`. `shell(cmd, cwd)` runs a shell command (with a git identity in its
    environment)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file() and (not rel.startswith(("data/", "reports/", "dvc.lock")) or rel == ANSWERS):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    shutil.copy2(params, dest / "params.yaml")
    if config is not None:
        from dvc.utils.hydra import apply_overrides

        from stages.configs import overrides, read_config

        apply_overrides(dest / "params.yaml", overrides(read_config(config)))
    shell("git init -q && git add -A && git commit -qm init", dest)
    return dest


def make_project(dest: Path, params: Path = TINY_PARAMS) -> Path:
    """copy_project with `sh`: the tiny config by default."""
    return copy_project(dest, params, sh)
