"""The `prepare` stage in process: the report on every run, params of the checks, nothing-to-do errors."""

import pyarrow.parquet as pq
import pytest
import yaml

from benchmarks.project import ROOT
from pipeline.datasets import ISSUE_SCHEMA, read_folder
from pipeline.storage import DataError
from stages import prepare
from stages.common import MANIFEST, Params, ParamsError
from tests.faults.builders import save_rgb


def tiny(tmp_path, **dataset) -> Params:
    params = yaml.safe_load((ROOT / "tests" / "tiny_params.yaml").read_text())
    params["dataset"].update(dataset)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return Params.load(tmp_path / "params.yaml")


def test_embedded_run_writes_an_empty_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    prepare.run(tiny(tmp_path))
    report = pq.read_table(prepare.DATA_ISSUES)
    assert report.num_rows == 0 and report.schema.remove_metadata().equals(ISSUE_SCHEMA)
    assert "data issues: none → reports/data_issues.parquet" in capsys.readouterr().out


def test_no_train_image_left_is_nothing_to_do(tmp_path, monkeypatch):
    root = tmp_path / "images"
    root.mkdir()
    save_rgb(root / "test.png")
    (root / "train.jpg").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("image,labels,split\ntrain.jpg,x,train\ntest.png,x,test\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="nothing to do: no usable train image among 2 listed; 1 excluded"):
        prepare.write_imported(read_folder(root, tmp_path / "labels.csv", None, 0.0, 0), "folder")
    assert not MANIFEST.exists()  # nothing half-written
    assert [r["kind"] for r in pq.read_table(prepare.DATA_ISSUES).to_pylist()] == ["zero_byte"]  # says why


@pytest.mark.parametrize("key, value, message", [
    ("max_pixels", 89_478_486, r"'dataset.max_pixels' must be in \[1, 89478485\]"),  # only lowered
    ("on_bad_input", "ignore", r"'dataset.on_bad_input' must be one of \['skip', 'fail'\]"),
    ("num_workers", -1, r"'dataset.num_workers' must be >= 0, got -1"),
])
def test_check_params_are_validated_by_key(tmp_path, key, value, message):
    with pytest.raises(ParamsError, match=message):
        prepare.input_checks(tiny(tmp_path, **{key: value}).section("dataset"))


def test_check_params_default_when_absent(tmp_path):
    params = yaml.safe_load((ROOT / "tests" / "tiny_params.yaml").read_text())
    for key in ("max_pixels", "on_bad_input", "num_workers"):
        del params["dataset"][key]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert prepare.input_checks(Params.load(tmp_path / "params.yaml").section("dataset")) == prepare.InputChecks()
