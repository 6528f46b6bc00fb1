import pytest

from stages.common import Params, ParamsError


def params(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return Params.load(p)


def test_errors_name_the_key(tmp_path):
    p = params(tmp_path, "score:\n  crops: many\n  crop_area: [0.3, 0.1]\nratio: 2\n")
    with pytest.raises(ParamsError, match="'score.crops' must be int"):
        p.section("score").get("crops", int)
    with pytest.raises(ParamsError, match="'score.crop_area' must be"):
        p.section("score").pair("crop_area", 0, 1)
    with pytest.raises(ParamsError, match="'ratio' must be in"):
        p.get("ratio", float, lo=0.0, hi=1.0)
    with pytest.raises(ParamsError, match="missing key 'score.grid'"):
        p.section("score").get("grid", int)
    with pytest.raises(ParamsError, match="missing key 'init'"):
        p.section("init")


def test_defaults_and_int_as_float(tmp_path):
    p = params(tmp_path, "a: 1\n")
    assert p.get("a", float) == 1.0 and p.get("b", int, default=3) == 3
    with pytest.raises(ParamsError, match="not valid YAML"):
        params(tmp_path, "a: [1,\n")
