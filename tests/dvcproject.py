"""Test-only helpers for end-to-end tests; the project copy and the CLI runner are benchmarks/project.py's."""

from pathlib import Path

from benchmarks.project import sh


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
