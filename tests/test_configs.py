"""The recommended per-dataset params files in configs/: complete, consistent with params.yaml, usable."""

from pathlib import Path

import open_clip
import pytest
import yaml

from benchmarks.project import ROOT, make_project, sh
from pipeline import clip
from tests.test_voc import voc_tree

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= keys(v, f"{prefix}{k}.")
    return out


def test_configs_exist_for_each_importer_and_the_paper_mode():
    formats = {yaml.safe_load(p.read_text())["dataset"]["format"] for p in CONFIGS}
    assert formats == {"voc", "coco", "nuswide", "folder", "embedded"}
    assert (ROOT / "configs" / "paper.yaml") in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_matches_params_layout_and_names_real_models(path: Path):
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    config = yaml.safe_load(path.read_text())
    outside_dataset = {k for k in keys(default) if not k.startswith(("dataset.", "teacher.train"))}
    assert outside_dataset <= keys(config), sorted(outside_dataset - keys(config))
    if config["dataset"]["format"] == "embedded":  # the paper mode of the embedded benchmark: toy teacher
        assert keys(default) == keys(config)
        return
    clip.register_model_configs()
    assert config["teacher"]["model"] in open_clip.list_models()
    assert config["sew"]["backbone"]["model"] in open_clip.list_models()
    assert config["teacher"]["pretrained"] in open_clip.list_pretrained_tags_by_model(config["teacher"]["model"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_has_every_param_dvc_yaml_declares(path):
    """DVC refuses to run a stage whose declared params are missing from params.yaml."""
    declared = {k for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()
                for k in stage.get("params", [])}
    missing = {k for k in declared if k not in keys(yaml.safe_load(path.read_text()))}
    assert not missing, f"{path.name} lacks {sorted(missing)}"


@pytest.mark.e2e
def test_voc_config_asks_for_weights_then_prepares(tmp_path):
    root = voc_tree(tmp_path, {"000001": [("dog", 0)], "000002": [("cat", 0)]}, ["000001"], ["000002"])
    config = yaml.safe_load((ROOT / "configs" / "voc2007.yaml").read_text())
    config["dataset"]["root"] = str(root)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(config))
    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p", params=params)
    # weights not in the offline caches: every stage refuses in validation, naming both models, writing nothing
    r = sh(f"HF_HOME={tmp_path / 'hf'} HF_HUB_OFFLINE=1 mlpl prepare", project, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "RN50x64-quickgelu" in r.stderr and "RN101-quickgelu" in r.stderr and "not available offline" in r.stderr
    assert not (project / "data" / "prepared").exists()
    weights = tmp_path / "weights.pt"  # resolution looks for the file; loading it is the teacher's business
    weights.write_bytes(b"0")
    config["teacher"]["pretrained"] = config["sew"]["backbone"]["pretrained"] = str(weights)
    (project / "params.yaml").write_text(yaml.safe_dump(config))
    sh("mlpl prepare", project)
    source = project / "data" / "prepared" / "images" / "SOURCE.txt"
    before = source.read_text()
    assert str(root) in before and "JPEGImages/000001.jpg" in before
    (root / "JPEGImages" / "000001.jpg").write_bytes((root / "JPEGImages" / "000002.jpg").read_bytes() + b"x")
    sh("mlpl prepare", project)  # an image edited in place changes what `score` depends on
    assert source.read_text() != before
