import dataclasses
from pathlib import Path

import pytest

from pipeline.cut import CutSettings
from stages.common import Params, ParamsError

ROOT = Path(__file__).resolve().parents[1]


def params(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return Params.load(p)


def test_errors_name_the_key(tmp_path):
    p = params(tmp_path, "score:\n  crops: many\n  crop_area: [0.3, 0.1]\nratio: 2\n")
    with pytest.raises(ParamsError, match="'score.crops' must be int"):
        p.section("score").get("crops", int)
    with pytest.raises(ParamsError, match=r"'score.crop_area' must be \[low, high\] within"):
        params(tmp_path, "score:\n  crop_area: [0.3, 0.1]\n").section("score").build(CutSettings)
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


def test_audit_collects_every_bad_key_and_finds_unread_ones(tmp_path):
    p = params(tmp_path, "sew:\n  p: 2.0\n  q: -1.0\n  L: 3\n  Lx: 3\ntop: 1\nother:\n  a: 1\n  b: 2\n").audited()
    s = p.section("sew")
    # collected, not raised: each bad key gets a well-typed stand-in so the check reads on
    assert s.get("p", float, lo=0.0, hi=1.0) == 0.0 and s.get("q", float, lo=0.0, hi=1.0) == 0.0
    assert s.get("L", int, lo=0) == 3 and s.get("kind", str, choices=("a", "b")) == "a"
    assert [e.split(": ", 1)[1] for e in p.audit.errors] == [
        "'sew.p' must be in [0.0, 1.0], got 2.0", "'sew.q' must be in [0.0, 1.0], got -1.0",
        "missing key 'sew.kind'"]
    p.get("top", int)
    p.section("other").allow("b")
    assert p.unread_keys() == ["sew.Lx", "other.a"]
    with pytest.raises(ParamsError, match="'sew.p' must be in"):  # without an audit, the first one raises
        Params.load(tmp_path / "params.yaml").section("sew").get("p", float, lo=0.0, hi=1.0)


def test_validate_names_unknown_keys_with_the_nearest_known_one(tmp_path, monkeypatch):
    import yaml

    from benchmarks.project import ROOT
    from stages.validate import validate

    config = yaml.safe_load((ROOT / "tests" / "tiny_params.yaml").read_text())
    config["correct"]["methd"] = "sqrt"
    config["init"]["views"] = "al"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError) as e:
        validate(Params.load(tmp_path / "params.yaml"))
    lines = str(e.value).splitlines()[1:]
    assert [line.split(": ", 1)[1] for line in lines] == [
        "'init.views' must be one of ['all', 'crops'], got 'al' (did you mean 'all'?)",
        "unknown key 'correct.methd' (did you mean 'correct.method'?)"]


def test_an_old_key_beside_its_new_name_is_one_error_and_a_lone_one_a_single_line(tmp_path, monkeypatch):
    import subprocess
    import sys

    import yaml

    from benchmarks.project import ROOT
    from stages.validate import validate

    config = yaml.safe_load((ROOT / "tests" / "tiny_params.yaml").read_text())
    config["sew"]["L"] = 2  # beside sew.max_overlays
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError) as e:
        validate(Params.load(tmp_path / "params.yaml"))
    lines = str(e.value).splitlines()[1:]
    assert [line.split(": ", 1)[1] for line in lines] == [
        "'sew.L' is the old name of 'sew.max_overlays': keep one of them"]  # never "unknown key" for either
    # alone, the old key works; `mlpl validate` says so in one line, once, though several stages read it
    del config["sew"]["max_overlays"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    r = subprocess.run([sys.executable, "-c", "from stages.cli import main; main()", "validate"], cwd=tmp_path,
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["warning: params.yaml: 'sew.L' is deprecated, write 'sew.max_overlays'"]
    # the same line where a stage runs in-process without the CLI (a benchmark, a notebook); other warnings
    # keep Python's format, with the file and line that warned
    code = ("import warnings; from pathlib import Path; from stages.common import Params; "
            "from pipeline.sew import SewSettings; Params.load(Path('params.yaml')).section('sew').build(SewSettings); "
            "warnings.warn('other', UserWarning)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "warning: params.yaml: 'sew.L' is deprecated, write 'sew.max_overlays'"
    assert len(lines) == 2 and lines[1].endswith("UserWarning: other") and lines[1].startswith("<string>:1:")


def test_info_outside_a_project_says_so_and_exits_2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stages.cli import app

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["info"])
    assert r.exit_code == 2 and "is not in an mlpl project" in r.output


def test_stages_validate_once_per_params_content(tmp_path, monkeypatch):
    import yaml

    from benchmarks.project import ROOT
    from stages import validate as validation

    config = yaml.safe_load((ROOT / "tests" / "tiny_params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    calls = []
    real = validation.validate
    monkeypatch.setattr(validation, "validate", lambda p: (calls.append(1), real(p)))
    validation.validate_once(Params.load(tmp_path / "params.yaml"))
    assert calls == [1] and validation.VALIDATED.is_file()
    # the same content, written otherwise (key order, comments): not checked again
    (tmp_path / "params.yaml").write_text("# a comment\n" + yaml.safe_dump(config, sort_keys=False))
    validation.validate_once(Params.load(tmp_path / "params.yaml"))
    assert calls == [1]
    # another value is checked again, and a bad one fails every time
    config["sew"]["overlay_prob"] = 1.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    for _ in range(2):
        with pytest.raises(ParamsError, match="sew.overlay_prob"):
            validation.validate_once(Params.load(tmp_path / "params.yaml"))
    assert calls == [1, 1, 1]
    # back to the content that passed: a failure never overwrote its stamp
    config["sew"]["overlay_prob"] = 0.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    validation.validate_once(Params.load(tmp_path / "params.yaml"))
    assert calls == [1, 1, 1]
    # other checking code (the stamp holds a digest of pipeline/ and stages/ too) checks again
    monkeypatch.setattr(validation, "code_digest", lambda: "other code")
    validation.validate_once(Params.load(tmp_path / "params.yaml"))
    assert calls == [1, 1, 1, 1]


def test_build_reads_a_settings_dataclass_as_the_one_definition(tmp_path):
    from pipeline.plmcl import Plmcl
    from pipeline.sew import SewSettings

    p = params(tmp_path, "sew:\n  overlay_prob: 0.25\n  pool_k: auto\n  epochs: 3\n").section("sew")
    s = p.build(SewSettings)
    assert (s.overlay_prob, s.pool_k, s.epochs) == (0.25, None, 3)
    assert s.max_overlays == SewSettings().max_overlays  # an absent key takes the field's default
    # every bad key at once, with the dataclass's own bounds (p < 1 is exclusive) and choices
    audited = params(tmp_path, "sew:\n  overlay_prob: 1.0\n  paste: fether\n  epochs: two\n"
                     "unknown: ignre\nplmcl:\n  eta: 2.0\n").audited()
    assert audited.section("sew").build(SewSettings) == SewSettings()  # stand-ins while auditing
    audited.build(Plmcl)
    assert [e.split(": ", 1)[1] for e in audited.audit.errors] == [
        "'sew.overlay_prob' must be in [0.0, 1.0), got 1.0",
        "'sew.paste' must be one of ['feather', 'rectangle'], got 'fether' (did you mean 'feather'?)",
        "'sew.epochs' must be int, got 'two'",
        "'unknown' must be one of ['pseudo', 'ignore', 'negative'], got 'ignre' (did you mean 'ignore'?)",
        "'plmcl.eta' must be in [0.0, 1.0], got 2.0"]
    with pytest.raises(ParamsError, match=r"sew.e_rounds must be in \[1, min\(sew.em_epochs, sew.epochs\)\] = \[1, 2"):
        params(tmp_path, "sew:\n  epochs: 2\n  e_rounds: 3\n").section("sew").build(SewSettings)
    with pytest.raises(ValueError, match=r"sew.overlay_prob must be in \[0.0, 1.0\)"):  # the same rule in code
        SewSettings(overlay_prob=1.0)


def test_old_key_names_still_work_with_a_warning(tmp_path):
    from pipeline.sew import SewSettings

    p = params(tmp_path, "sew:\n  p: 0.3\n  L: 0\n  k: 7\n").audited()
    with pytest.warns(FutureWarning, match="'sew.L' is deprecated, write 'sew.max_overlays'"):
        s = p.section("sew").build(SewSettings)
    assert (s.overlay_prob, s.max_overlays, s.pool_k) == (0.3, 0, 7) and p.unread_keys() == []
    both = params(tmp_path, "sew:\n  L: 0\n  max_overlays: 2\n").section("sew")
    with pytest.raises(ParamsError, match="'sew.L' is the old name of 'sew.max_overlays'"):
        both.build(SewSettings)


def test_build_reads_pairs_and_nested_settings(tmp_path):
    from pipeline.scoring import ScoreJob

    p = params(tmp_path, "score:\n  crops: 2\n  crop_area: [0.2, 1.5]\n  crop_placement: corner\n"
                         "  batch_views: auto\n  device: tpu\n").audited()
    assert p.section("score").build(ScoreJob) == ScoreJob()  # stand-ins while auditing
    assert [e.split(": ", 1)[1] for e in p.audit.errors] == [
        "'score.crop_area' must be [low, high] within (0.0, 1.0], got [0.2, 1.5]",
        "score.device must be auto, cpu, cuda or cuda:N, got 'tpu'"]  # a relation of fields, checked all the same
    ok = params(tmp_path, "score:\n  crops: 2\n  crop_area: [0.2, 0.5]\n  crop_placement: corner\n")
    job = ok.section("score").build(ScoreJob)
    assert (job.settings.crops, job.settings.crop_area, job.settings.placement) == (2, (0.2, 0.5), "corner")


def test_the_library_defaults_are_the_dags():
    """A settings dataclass built with no arguments equals what the DAG builds from params.yaml: a user of
    the library gets the behaviour of a user of `dvc repro` (one source of defaults; the papers' values
    are configs/paper.yaml)."""
    import importlib
    import pkgutil

    import pipeline
    from pipeline.settings import Settings

    for module in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        importlib.import_module(module.name)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    params = Params.load(ROOT / "params.yaml")
    differ, checked = {}, []
    for cls in sorted(set(subclasses(Settings)), key=lambda c: (c.__module__, c.__name__)):
        view = params
        for name in filter(None, cls.SECTION.split(".")):
            view = view.section(name)
        built, default = view.build(cls), cls()
        checked.append(cls.__name__)
        if built != default:
            differ[cls.__name__] = {f.name: (getattr(built, f.name), getattr(default, f.name))
                                    for f in dataclasses.fields(cls)
                                    if getattr(built, f.name) != getattr(default, f.name)}
    assert {"SewSettings", "Plmcl", "HstSettings", "Correction", "InitSettings", "TeacherTraining"} <= set(checked)
    assert not differ, f"params.yaml (left) and the class defaults (right) differ: {differ}"
