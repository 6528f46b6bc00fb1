"""A copy of this project in a new git repo: what the benchmarks and the end-to-end tests run DVC in."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_project(dest: Path, params: Path, shell: Callable[[str, Path], object]) -> Path:
    """Copy the tracked (and untracked, unignored) files, not data, reports or dvc.lock, with `params` as
    params.yaml, and commit them in a new repo at `dest`. `shell(cmd, cwd)` runs a shell command (with
    a git identity in its environment)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file() and not rel.startswith(("data/", "reports/", "dvc.lock")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    shutil.copy2(params, dest / "params.yaml")
    shell("git init -q && git add -A && git commit -qm init", dest)
    return dest
