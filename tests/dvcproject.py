"""Test-only helpers for end-to-end tests; the project copy and the CLI runner are benchmarks/project.py's."""

import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from benchmarks.project import make_project, sh


@dataclass(frozen=True)
class BuiltProject:
    """The tiny project reproduced from scratch by `dvc repro` and committed with its dvc.lock."""

    path: Path
    repro_stdout: str  # what that first `dvc repro` printed

    def copy_to(self, dest: Path) -> Path:
        """The whole built project (git history, DVC cache, outputs) at `dest`, ready for experiments."""
        shutil.copytree(self.path, dest, symlinks=True)
        return dest

    def seed_cache(self, project: Path) -> Path:
        """Give a fresh copy of the project this build's DVC cache, run cache included: its `dvc repro` then
        checks every output out of the cache ("Stage … is cached") instead of training and scoring again."""
        shutil.copytree(self.path / ".dvc" / "cache", project / ".dvc" / "cache", dirs_exist_ok=True)
        return project


def build_once(dest: Path) -> BuiltProject:
    """Build the tiny project at `dest` unless a finished build is there. A file lock makes the test session's
    processes (pytest-xdist workers) share one build: the first builds it, the others wait and reuse it."""
    log = dest.with_name(dest.name + ".repro.txt")  # written last: its presence marks a finished build
    with FileLock(str(dest.with_name(dest.name + ".lock"))):
        if not log.exists():
            shutil.rmtree(dest, ignore_errors=True)  # an interrupted build
            dest.mkdir(parents=True)
            make_project(dest)
            repro = sh("dvc repro", dest)
            sh("git add -A && git commit -qm repro", dest)
            log.write_text(repro.stdout)
    return BuiltProject(dest, log.read_text())


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
