"""The configs in configs/: each holds only its differences from params.yaml, names real keys and models,
and applies through `mlpl config` (as `dvc exp run -S` flags or written into params.yaml)."""

import shutil
import subprocess
from pathlib import Path

import open_clip
import pytest
import yaml

from benchmarks.project import ROOT, make_project, sh
from pipeline import clip
from stages.common import Params, ParamsError
from stages.configs import leaves, merge, read_config
from stages.validate import validate
from tests.test_voc import voc_tree

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def applied(path: Path, dest: Path) -> dict:
    """params.yaml with the config written into it by `mlpl config --write`, as a dict."""
    params = dest / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    subprocess.run(["mlpl", "config", str(path), "--write", "--params", str(params)], check=True,
                   capture_output=True, text=True)
    return yaml.safe_load(params.read_text())


def test_configs_exist_for_each_importer_and_the_paper_mode():
    formats = {read_config(p).get("dataset", {}).get("format", DEFAULTS["dataset"]["format"])
               for p in CONFIGS}
    assert formats == {"voc", "coco", "nuswide", "folder", "embedded"}
    assert (ROOT / "configs" / "paper.yaml") in CONFIGS


def test_real_image_configs_share_one_block(tmp_path):
    """The papers' towers and constants are written once (configs/shared/real_images.yaml) and included by
    every real-photograph config; a config's own keys win over what it includes; a cycle is an error."""
    shared = read_config(ROOT / "configs" / "shared" / "real_images.yaml")
    for name in ("voc2007", "voc2012", "coco2014", "nuswide", "folder"):
        path = ROOT / "configs" / f"{name}.yaml"
        own = yaml.safe_load(path.read_text())
        assert own.pop("include") == "shared/real_images.yaml"
        assert not set(dict(leaves(own))) & set(dict(leaves(shared)))  # nothing written twice
        config = read_config(path)
        assert config == merge(shared, own) and config["teacher"]["model"] == "RN50x64-quickgelu"
    (tmp_path / "base.yaml").write_text("sew:\n  epochs: 2\n  lr: 0.1\nteacher:\n  model: A\n")
    (tmp_path / "top.yaml").write_text("include: base.yaml\nsew:\n  epochs: 5\n")
    assert read_config(tmp_path / "top.yaml") == {"sew": {"epochs": 5, "lr": 0.1}, "teacher": {"model": "A"}}
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\n")
    with pytest.raises(ParamsError, match="includes itself"):
        read_config(tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("include: 3\n")
    with pytest.raises(ParamsError, match="'include' must be a config file"):
        read_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_holds_only_differences_and_applies_to_valid_params(path: Path, tmp_path):
    config = dict(leaves(read_config(path)))
    default = dict(leaves(DEFAULTS))
    assert not {k for k, v in config.items() if default.get(k, object()) == v}, "keys equal to the default"
    merged = applied(path, tmp_path)
    assert {k: v for k, v in leaves(merged) if k in config} == config  # every key as the config says
    assert {k: v for k, v in leaves(merged) if k not in config} == {k: v for k, v in default.items()
                                                                    if k not in config}  # the rest: defaults
    # a typo'd key would be unknown; only the dataset's paths (set by the user) and weights this machine
    # lacks may fail validation
    try:
        validate(Params.load(tmp_path / "params.yaml"))
    except ParamsError as e:
        problems = [line for line in str(e).splitlines()[1:]
                    if "does not resolve offline" not in line and not line.endswith(("not a directory", "not a file"))]
        assert not problems, problems
    if merged["dataset"]["format"] != "embedded":
        clip.register_model_configs()
        assert merged["teacher"]["model"] in open_clip.list_models()
        assert merged["sew"]["backbone"]["model"] in open_clip.list_models()
        assert merged["teacher"]["pretrained"] in open_clip.list_pretrained_tags_by_model(merged["teacher"]["model"])


def test_config_flags_are_dvc_set_param_overrides(tmp_path):
    """What `mlpl config FILE` prints, passed through xargs, is what DVC's -S applies."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "mine.yaml"
    path.write_text("dataset:\n  format: voc\n  root: /data/my VOC's/VOC2007\nscore:\n  crop_area: [0.1, 0.3]\n")
    printed = subprocess.run(["mlpl", "config", str(path)], check=True, capture_output=True, text=True).stdout
    args = subprocess.run(["xargs", "python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"],
                          input=printed, check=True, capture_output=True, text=True).stdout
    flags = yaml.safe_load(args)
    assert flags[::2] == ["-S"] * 3
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(params, flags[1::2])
    got = yaml.safe_load(params.read_text())
    assert got["dataset"]["root"] == "/data/my VOC's/VOC2007" and got["score"]["crop_area"] == [0.1, 0.3]
    assert "# fraction of train label entries known" in params.read_text()  # comments kept


@pytest.mark.e2e
def test_voc_config_asks_for_weights_then_prepares(tmp_path):
    root = voc_tree(tmp_path, {"000001": [("dog", 0)], "000002": [("cat", 0)]}, ["000001"], ["000002"])
    config = applied(ROOT / "configs" / "voc2007.yaml", tmp_path)
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
