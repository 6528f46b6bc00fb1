"""Real-teacher mode: weights from a local checkpoint file, with no network; clear error when absent."""

import json
import shutil

import pytest
import torch
import yaml

from benchmarks.project import make_project, sh
from pipeline import clip
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.e2e

NO_NETWORK = "unshare -n" if shutil.which("unshare") and sh("unshare -n true", ".", check=False).returncode == 0 else ""


def set_params(project, backbone=None, **teacher):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["teacher"].update(teacher)
    params["sew"]["backbone"].update(backbone or {})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_local_checkpoint_teacher_scores_offline(tmp_path, tiny_model):
    ckpt = tmp_path / "weights" / "tiny.pt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": tiny_model.state_dict()}, ckpt)
    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p")
    set_params(project, model=TINY_MODEL, pretrained=str(ckpt))
    sh(f"HF_HUB_OFFLINE=1 {NO_NETWORK} sh -c 'mlpl prepare && mlpl teacher && mlpl score'", project)
    descriptor = json.loads((project / "data" / "teacher" / "descriptor.json").read_text())
    assert descriptor["found_in"] == "file" and descriptor["weights"] == str(ckpt.resolve())
    assert descriptor["sha256"] == clip.sha256_of(ckpt)
    attrs = json.loads((project / "data" / "scores.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["weights_sha256"] == descriptor["sha256"] and attrs["model"] == TINY_MODEL


def test_adapter_on_a_backbone_of_its_own(tmp_path, tiny_model):
    """Score with one model and adapt another (the papers: RN50x64 scores, RN101 adapts); here a ViT
    backbone, so the adapter reads patch tokens."""
    teacher_ckpt, backbone_ckpt = tmp_path / "teacher.pt", tmp_path / "vit.pt"
    torch.save({"state_dict": tiny_model.state_dict()}, teacher_ckpt)
    torch.manual_seed(1)
    torch.save({"state_dict": clip.create_model("mlpl-tiny-vit").state_dict()}, backbone_ckpt)
    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p")
    set_params(project, model=TINY_MODEL, pretrained=str(teacher_ckpt),
               backbone={"model": "mlpl-tiny-vit", "pretrained": str(backbone_ckpt)})
    sh(f"HF_HUB_OFFLINE=1 {NO_NETWORK} dvc repro", project)
    adapter = torch.load(project / "data" / "models" / "adapter.pt", weights_only=True)
    assert adapter["backbone"]["model"] == "mlpl-tiny-vit"
    assert adapter["backbone"]["sha256"] == clip.sha256_of(backbone_ckpt)
    student = torch.load(project / "data" / "models" / "student.pt", weights_only=True)
    assert student["model"] == "mlpl-tiny-vit" and student["backbone_sha256"] == clip.sha256_of(backbone_ckpt)
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert 0 <= metrics["test"]["student"]["map"] <= 1 and 0 <= metrics["test"]["ceiling"]["map"] <= 1


@pytest.mark.parametrize("pretrained, message", [
    ("openai", "not available offline"),
    ("no-such-tag", "neither an existing file nor a pretrained tag"),
])
def test_missing_weights_fail_clearly(tmp_path, pretrained, message):
    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p")
    set_params(project, model="RN50-quickgelu", pretrained=pretrained)
    r = sh(f"HF_HOME={tmp_path / 'empty-hf'} HF_HUB_OFFLINE=1 mlpl teacher", project, check=False)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert not (project / "data" / "teacher").exists()
