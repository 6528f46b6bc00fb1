"""Helpers for end-to-end tests: a copy of this project in a temporary git repo, driven by the real CLIs."""

import os
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.project import copy_project

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


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


def make_project(dest: Path, params: Path = ROOT / "tests" / "tiny_params.yaml") -> Path:
    """Copy the project's tracked files (not data, reports or dvc.lock) and commit them in a new repo."""
    return copy_project(dest, params, sh)


def score_with_tiny_teacher(project: Path, weights_dir: Path):
    """Point the project's teacher at a saved tiny open_clip model, then run `teacher` and `score`."""
    import torch
    import yaml
    import zarr

    from pipeline.clip import create_model

    ckpt = weights_dir / "tiny-teacher.pt"
    torch.manual_seed(0)
    torch.save({"state_dict": create_model("mlpl-tiny-rn").state_dict()}, ckpt)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["teacher"].update(model="mlpl-tiny-rn", pretrained=str(ckpt))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("mlpl teacher && mlpl score", project)
    return zarr.open_group(str(project / "data" / "scores.zarr"), mode="r")
