from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline.adapter import Adapter, AdapterConfig, FrozenTowerClassifier, adapter_for
from pipeline.clip import cell_projection, load_described
from pipeline.images import ResizedImages
from pipeline.methods import RULES
from pipeline.models import (
    AdapterSpec,
    FrozenTowerSpec,
    NoModel,
    SmallCNNSpec,
    load_checkpoint,
    load_student,
    save_checkpoint,
    tower_state_dict,
    write_checkpoint,
)
from pipeline.report import render_report
from pipeline.student import StudentTraining, augment, predict_paths, train_small_cnn
from stages.cli import app
from tests.conftest import TINY_MODEL, make_rule


def test_adapter_shapes_and_per_query_diagonal(tiny_model):
    torch.manual_seed(0)
    adapter = adapter_for(tiny_model, 3, 64, hidden=16, heads=2).eval()
    assert adapter.cfg.grid == (2, 2)  # 64 px into a 32-stride tower
    feats = torch.randn(2, adapter.cfg.in_dim, 2, 2)
    out = adapter(feats)
    assert out.shape == (2, 3)
    with torch.no_grad():
        adapter.fc_weight[1] += 1.0
    changed = adapter(feats) != out
    assert changed[:, 1].all() and not changed[:, [0, 2]].any()


def _images(tmp_path, n=6):
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_adapter_computes_its_1x1_convolutions_over_tokens():
    """The token-major forward is the bottleneck, projection and BatchNorm of the paper's 2-D layout."""
    torch.manual_seed(0)
    adapter = Adapter(AdapterConfig(in_dim=24, n_classes=3, grid=(3, 3), hidden=16, heads=2, dropout=0.0))
    x = torch.randn(5, 24, 3, 3)
    for train in (True, False):
        adapter.train(train)
        r = adapter.cfg.residual
        mixed = r * adapter.bottleneck(x) + (1 - r) * x
        memory = adapter.project(mixed).flatten(2).transpose(1, 2) + adapter.pos
        out = adapter.decoder(adapter.queries.unsqueeze(0).expand(5, -1, -1), memory)
        reference = (out * adapter.fc_weight).sum(-1) + adapter.fc_bias
        assert torch.allclose(adapter(x), reference, atol=1e-5)


@pytest.mark.parametrize("prediction", ["query", "region"])
def test_frozen_tower_student_roundtrip(tmp_path, tiny_model, prediction):
    """The student predicts with the adapter's head (TRM-ML's region head included) after the checkpoints."""
    torch.manual_seed(0)
    cells = cell_projection(tiny_model.visual)
    embed = {"embed": cells[0].shape[0]} if prediction == "region" else {}
    adapter = adapter_for(tiny_model, 3, 32, hidden=16, heads=2, prediction=prediction, **embed).eval()
    if prediction == "region":  # TRM-ML's region head: the tower's cell projection and some text embeddings
        adapter.set_joint_space(*cells, torch.randn(3, cells[0].shape[0]), 10.0)
    spec = AdapterSpec(adapter.cfg, 32, ["a", "b", "c"], {"model": TINY_MODEL, "sha256": "x"})
    paths = _images(tmp_path)
    direct = predict_paths(FrozenTowerClassifier(tiny_model, adapter, 32), 32, paths, batch_size=4)
    save_checkpoint(tmp_path / "adapter.pt", spec, adapter)
    loaded_spec, loaded = load_checkpoint(tmp_path / "adapter.pt", backbone=tiny_model)  # weights_only load
    assert loaded_spec == spec
    assert np.allclose(predict_paths(loaded, 32, paths, batch_size=3), direct, atol=1e-5)
    save_checkpoint(tmp_path / "student.pt", FrozenTowerSpec.from_adapter(loaded_spec), loaded)
    module, classes, size = load_student(tmp_path / "student.pt")  # the tower's weights travel with it
    assert classes == ["a", "b", "c"] and size == 32
    assert np.allclose(predict_paths(module, size, paths, batch_size=3), direct, atol=1e-5)


def test_the_embedded_teachers_tower_is_read_from_its_file_as_the_loaded_model_gives_it(tmp_path, tiny_model,
                                                                                         monkeypatch):
    """`distill` writes the tower's state as read from the embedded teacher's file, without building the model:
    the file it saves has the bytes it had when the tower was built and loaded, though the teacher trains
    channels_last. Other weights still go through the model."""
    import copy

    from pipeline import clip
    from pipeline.toy_teacher import save_embedded_teacher

    trained = copy.deepcopy(tiny_model).to(memory_format=torch.channels_last)
    assert any(not p.is_contiguous() for p in trained.visual.parameters())  # the case the copy is for
    descriptor = save_embedded_teacher(trained, TINY_MODEL, ["a"], tmp_path / "teacher.pt",
                                       str(tmp_path / "teacher.pt"), 1.0)
    built = load_described(descriptor).visual.state_dict()

    def no_model(_):
        raise AssertionError("the model was built")

    monkeypatch.setattr(clip, "load_described", no_model)
    for name, state in (("built", built), ("read", tower_state_dict(descriptor))):
        (tmp_path / name).mkdir()
        write_checkpoint(tmp_path / name / "tower.pt", {"visual_state_dict": state})
    assert (tmp_path / "built" / "tower.pt").read_bytes() == (tmp_path / "read" / "tower.pt").read_bytes()
    for other in ({**descriptor, "pretrained": "file"}, {**descriptor, "model": "mlpl-tiny-vit"}):
        with pytest.raises(AssertionError, match="the model was built"):
            tower_state_dict(other)


def test_models_over_one_tower_share_its_pass(tmp_path, tiny_model):
    import copy

    from pipeline.clip import create_model
    from pipeline.student import predict_models

    torch.manual_seed(0)
    a = FrozenTowerClassifier(tiny_model, adapter_for(tiny_model, 3, 32, hidden=16, heads=2).eval(), 32)
    b = FrozenTowerClassifier(copy.deepcopy(tiny_model), adapter_for(tiny_model, 2, 32, hidden=8, heads=2).eval(), 32)
    other = FrozenTowerClassifier(create_model(TINY_MODEL), adapter_for(tiny_model, 3, 32, hidden=16, heads=2), 32)
    paths = _images(tmp_path)
    alone = {name: predict_paths(m, 32, paths) for name, m in (("a", a), ("b", b), ("other", other))}
    passes = []
    # each tower counts its own forwards; the hooks go again after, as `a`'s tower is the session's tiny_model
    hooks = [m.visual.conv1.register_forward_hook(lambda mod, args, out: passes.append(args[0].shape[0]))
             for m in (a, b, other)]
    try:
        together = predict_models({"a": (a, 32), "b": (b, 32), "other": (other, 32)}, paths)
    finally:
        for hook in hooks:
            hook.remove()
    assert list(together) == ["a", "b", "other"] and together["b"].shape == (6, 2)
    assert all(np.array_equal(together[k], alone[k]) for k in alone)
    assert passes == [6, 6]  # a and b (equal towers, one a copy) in one pass, other in its own


def test_checkpoint_kinds_and_refusals(tmp_path):
    save_checkpoint(tmp_path / "none.pt", NoModel("dataset has no ground truth"))
    assert load_checkpoint(tmp_path / "none.pt") == (NoModel("dataset has no ground truth"), None)
    with pytest.raises(ValueError, match="unknown student kind 'none'"):
        load_student(tmp_path / "none.pt")
    torch.save({"kind": "mystery"}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="unknown model kind 'mystery'"):
        load_checkpoint(tmp_path / "odd.pt")


@pytest.mark.e2e
def test_small_cnn_learns_and_roundtrips(tmp_path):
    paths = _images(tmp_path, 8)
    # class 0: bright images; the CNN must fit a simple brightness rule
    bright = np.array([np.asarray(Image.open(p)).mean() > 127 for p in paths])
    targets = np.stack([np.where(bright, 4.0, -4.0), np.zeros(8)], 1).astype(np.float32)
    losses = []
    model = train_small_cnn(ResizedImages(paths, 16), targets, 16, StudentTraining(epochs=30, batch_size=4, width=4),
                            on_step=lambda s, loss: losses.append(loss))
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    save_checkpoint(tmp_path / "cnn.pt", SmallCNNSpec(2, 4, 16, ["a", "b"]), model)
    module, classes, size = load_student(tmp_path / "cnn.pt")
    assert size == 16 and classes == ["a", "b"]
    assert np.allclose(predict_paths(module, 16, paths), predict_paths(model, 16, paths), atol=1e-6)


@pytest.mark.parametrize("rule", RULES)
def test_small_cnn_under_each_rule_is_seeded(tmp_path, rule):
    paths = _images(tmp_path, 8)
    targets = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    known = np.zeros((8, 2), bool)
    known[:4, 0] = True
    kwargs = dict(known=known, rule=make_rule(rule), weights=np.full((8, 2), 2.0, np.float32))
    training = StudentTraining(epochs=2, batch_size=4, width=4)
    a = train_small_cnn(ResizedImages(paths, 16), targets, 16, training, **kwargs)
    b = train_small_cnn(ResizedImages(paths, 16), targets, 16, training, **kwargs)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k


def test_augment_keeps_shape_and_is_seeded():
    x = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b)


def test_predict_command(tmp_path, tiny_model):
    _student(tmp_path, tiny_model)
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    _images(folder, 3)
    _images(folder / "sub", 2)
    (folder / "notes.txt").write_text("not an image")
    runner = CliRunner()
    r = runner.invoke(app, ["predict", str(folder), "--out", str(tmp_path / "p.parquet"), "--model",
                            str(tmp_path / "student.pt")])
    assert r.exit_code == 0, r.output
    import pandas as pd

    df = pd.read_parquet(tmp_path / "p.parquet")
    assert len(df) == 5 and "sub/img0" in set(df.image_id) and "sub/img0.png" in set(df.path)
    probs = np.stack(df.probs)
    assert probs.shape == (5, 2) and ((probs > 0) & (probs < 1)).all()
    expected = [";".join(c for c, p in zip(["a", "b"], row, strict=True) if p >= 0.5) for row in probs]
    assert df.labels.tolist() == expected
    assert len(pd.read_parquet(tmp_path / "p.issues.parquet")) == 0
    r = runner.invoke(app, ["predict", str(tmp_path / "missing"), "--model", str(tmp_path / "student.pt")])
    assert r.exit_code == 2 and "not a directory" in r.output


def test_report_shows_ladder_and_examples(tmp_path):
    paths = _images(tmp_path, 2)
    metrics = {"labels": {"z0": {"map": 0.5, "inversions": 3}, "cut": {"map": 0.75, "inversions": 1}},
               "test": {"student": {"map": 0.8, "cf1": 0.7, "of1": 0.6, "hamming": 0.1}}, "gap_closure": 0.42}
    html = render_report(metrics, ["a", "b"], {"student": np.array([0.9, np.nan])}, paths,
                         np.array([[1, 0], [0, 1]]), np.array([[3.0, -3.0], [-3.0, -3.0]]), n_examples=2)
    assert "<svg" in html and "0.750" in html and "0.420" in html
    assert html.count("data:image/png;base64,") == 2
    assert 'class="hit">✓ a' in html and 'class="miss">✗ b' in html  # marked, not by colour alone
    assert "<dt>inversions</dt>" in html and "<dt>gap closure</dt>" in html


def test_report_shows_the_run_pr_curves_and_label_changes(tmp_path):
    from pipeline.report import precision_at_truth, rung_changes

    truth = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    first = np.array([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    last = np.array([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    assert precision_at_truth(truth, first)[:3].tolist() == [0.5, 0.0, 1.0]
    assert np.isnan(precision_at_truth(truth, first)[3])  # nothing to find
    assert rung_changes(truth, {"z0": first, "refined": last}, 5) == ([0], [2])

    paths = _images(tmp_path, 4)
    metrics = {"labels": {"z0": {"map": 0.5}, "refined": {"map": 0.7}}, "test": {"student": {"map": 0.8}}}
    html = render_report(metrics, ["a", "b", "c"], {"student": np.array([0.9, 0.8, 0.7])}, paths[:2],
                         truth[:2], last[:2], n_examples=2,
                         pr_curves={"student": (np.array([0.0, 1.0]), np.array([1.0, 0.5]))},
                         run={"summary": {"labels known (ratio)": 0.25}, "provenance": {"mlpl": "9.9"},
                              "params": {"ratio": 0.25, "sew": {"L": 3}}},
                         train_paths=paths, train_truth=truth, train_rungs={"z0": first, "refined": last})
    assert "<polyline" in html and "recall" in html  # the PR curve
    # the dataset's statistics: a and c come together twice in the 4 train images, b never with them
    assert "<h2>Dataset (train split ground truth)</h2>" in html and "1: 2, 2: 1" in html
    assert 'title="P(a | c) = 1.00">2.0</td>' in html and "a | c: 1.00 (×2.0)" not in html  # seen < 5 times
    assert "labels known (ratio)" in html and "9.9" in html and "L: 3" in html  # the run and its params
    fixed = html.split("<h3>Most fixed</h3>")[1].split("</table>")[0]
    broken = html.split("<h3>Most broken</h3>")[1].split("</table>")[0]
    assert "img0" in fixed and "img2" in broken and "img2" not in fixed


def test_vit_tower_patch_tokens_feed_the_adapter():
    from pipeline.clip import create_model

    torch.manual_seed(0)
    vit = create_model("mlpl-tiny-vit")
    adapter = adapter_for(vit, 3, 32, hidden=16, heads=2).eval()
    assert adapter.cfg.grid == (4, 4)  # 32 px / 8 px patches
    out = FrozenTowerClassifier(vit, adapter, 32)(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert out.shape == (2, 3)
    with pytest.raises(ValueError, match="sew.image_size"):
        adapter_for(vit, 3, 64)


def _student(tmp_path, tiny_model):
    torch.manual_seed(0)
    adapter = adapter_for(tiny_model, 2, 32, hidden=16, heads=2).eval()
    spec = FrozenTowerSpec(TINY_MODEL, "x", adapter.cfg, 32, ["a", "b"])
    save_checkpoint(tmp_path / "student.pt", spec, FrozenTowerClassifier(tiny_model, adapter, 32))
    return tmp_path / "student.pt"


def test_predict_names_every_file_once_counts_what_it_skips_and_flags_small_images(tmp_path, tiny_model):
    import pandas as pd

    model = _student(tmp_path, tiny_model)  # input 32 px; _images are 40 px
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = _images(folder, 2)
    Image.open(good[0]).save(folder / "img0.jpg")  # the same stem as img0.png: two files, two ids
    Image.fromarray(np.zeros((20, 50, 3), np.uint8)).save(folder / "tiny.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "README").write_text("nor this")
    out = tmp_path / "p.parquet"
    r = CliRunner().invoke(app, ["predict", str(folder), "--out", str(out), "--model", str(model)])
    assert r.exit_code == 0, r.output
    assert "skipped 2 non-image file(s)" in r.output
    df = pd.read_parquet(out)
    assert df.image_id.tolist() == ["img0.jpg", "img0.png", "img1", "tiny"] and df.image_id.is_unique
    issues = pd.read_parquet(tmp_path / "p.issues.parquet")
    assert dict(zip(issues.path, issues.kind, strict=True)) == {
        "img0.jpg": "duplicate_id", "img0.png": "duplicate_id", "tiny.png": "small_image"}
    assert set(issues.action) == {"kept"} and "50×20 px" in issues.detail[issues.path == "tiny.png"].item()
    # one image file is a valid input: the same row as in its folder
    one = tmp_path / "one.parquet"
    r = CliRunner().invoke(app, ["predict", str(folder / "img1.png"), "--out", str(one), "--model", str(model)])
    assert r.exit_code == 0, r.output
    alone = pd.read_parquet(one)
    assert alone.image_id.tolist() == ["img1"]
    assert np.allclose(alone.logits[0], df.logits[df.image_id == "img1"].item(), atol=1e-5)
    r = CliRunner().invoke(app, ["predict", str(folder / "notes.txt"), "--model", str(model)])
    assert r.exit_code == 2 and "not an image file" in r.output


def test_predict_ids_are_unique_when_a_bare_id_is_another_files_name():
    from stages.predict import image_ids

    rel = [Path("a.jpg"), Path("a.png"), Path("a.png.jpg"), Path("b.png"), Path("c.png.jpg")]
    ids, issues = image_ids(rel)
    # a.png.jpg's bare id would be a.png, which another file's id already is: it keeps its suffix too
    assert ids == ["a.jpg", "a.png", "a.png.jpg", "b", "c.png"] and len(set(ids)) == len(ids)
    assert [(i.path, i.kind) for i in issues] == [("a.jpg", "duplicate_id"), ("a.png", "duplicate_id"),
                                                  ("a.png.jpg", "duplicate_id")]


def test_predict_fail_decodes_everything_before_any_inference(tmp_path, tiny_model, monkeypatch):
    from stages import predict as predict_stage

    model = _student(tmp_path, tiny_model)
    folder = tmp_path / "imgs"
    folder.mkdir()
    _images(folder, 2)
    (folder / "zz_empty.png").write_bytes(b"")  # the last file in path order
    called = []
    monkeypatch.setattr(predict_stage, "predict_files", lambda *a, **k: called.append(1))
    r = CliRunner().invoke(app, ["predict", str(folder), "--out", str(tmp_path / "p.parquet"), "--model", str(model),
                                 "--on-bad-input", "fail"])
    assert r.exit_code == 2 and "zz_empty.png" in r.output and not called
    assert not (tmp_path / "p.parquet").exists()


def test_predict_skips_and_reports_every_bad_file(tmp_path, tiny_model):
    import pandas as pd

    model = _student(tmp_path, tiny_model)
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = _images(folder, 3)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "noise.png").write_bytes(np.random.default_rng(0).bytes(500))
    (folder / "cut.png").write_bytes(good[0].read_bytes()[:60])  # a truncated PNG
    runner = CliRunner()
    out = tmp_path / "p.parquet"
    r = runner.invoke(app, ["predict", str(folder), "--out", str(out), "--model", str(model), "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    assert all(name in r.output for name in ("empty.jpg", "noise.png", "cut.png"))
    df = pd.read_parquet(out)
    assert df.path.tolist() == ["img0.png", "img1.png", "img2.png"]
    # the good rows are exactly what the student predicts for those files alone
    module, _, size = load_student(model)
    assert np.allclose(np.stack(df.logits), predict_paths(module, size, good), atol=1e-5)
    issues = pd.read_parquet(tmp_path / "p.issues.parquet")
    assert sorted(issues.path) == ["cut.png", "empty.jpg", "noise.png"]
    assert dict(zip(issues.path, issues.kind, strict=True))["empty.jpg"] == "zero_byte"
    assert set(issues.action) == {"excluded"}

    out.unlink()
    r = runner.invoke(app, ["predict", str(folder), "--out", str(out), "--model", str(model),
                            "--on-bad-input", "fail"])
    assert r.exit_code == 2 and all(n in r.output for n in ("empty.jpg", "noise.png", "cut.png")), r.output
    assert not out.exists()


def test_report_headline_figures_and_readable_names(tmp_path):
    import re
    from xml.etree import ElementTree

    from pipeline.report import axis_floor, bar_chart_svg, report_figures, standalone_svg

    # the ladder's axis starts below its lowest rung, so 0.01 of difference is several pixels
    assert axis_floor([0.669, 0.95, np.nan]) == pytest.approx(0.6) and axis_floor([0.02]) == 0.0
    svg = bar_chart_svg(["a", "b"], {"mAP": [0.95, 0.96]}, vmin=axis_floor([0.95, 0.96]))
    widths = [float(w) for w in re.findall(r'<rect x="\d+" y="[\d.]+" width="([\d.]+)"', svg)]
    assert widths[1] - widths[0] >= 5  # at 0..1 it would be 5.5 px only at 550 px of plot, here ~30
    assert "the axis starts at 0.90" in svg

    metrics = {"labels": {"z0": {"map": 0.67}, "cut": {"map": 0.93}, "refined": {"map": 0.96}},
               "test": {"student": {"map": 0.953, "cf1": 0.8, "of1": 0.8, "hamming": 0.1},
                        "zero_shot": {"map": 0.669, "cf1": 0.5, "of1": 0.5, "hamming": 0.2},
                        "ceiling": {"map": 0.989, "cf1": 0.9, "of1": 0.9, "hamming": 0.05}},
               "gap_closure": 0.887, "scores": {"precision": "bf16", "device": "cpu", "cpu": "x86_64 AVX512"}}
    per_class = {"zero_shot": np.array([0.5, 0.6]), "student": np.array([0.9, 0.95])}
    curve = (np.array([0.0, 1.0]), np.array([1.0, 0.5]))
    figures = report_figures(metrics, ["a", "b"], per_class, {"zero_shot": curve, "student": curve})
    assert set(figures) == {"ladder.svg", "per_class_ap.svg", "pr.svg"}
    for svg in figures.values():  # each a standalone SVG document
        assert ElementTree.fromstring(standalone_svg(svg).split("\n", 1)[1]).tag.endswith("svg")
    assert "refined by EM (refined)" in figures["ladder.svg"] and "CLIP zero-shot (zero_shot)" in figures["pr.svg"]

    paths = _images(tmp_path, 2)
    html = render_report(metrics, ["a", "b"], per_class, paths, np.array([[1, 0], [0, 1]]),
                         np.array([[3.0, -3.0], [-3.0, 3.0]]), n_examples=2, figures=figures,
                         run={"params": {"ratio": 0.1, "seed": 2, "dataset": {"seed": 7}}},
                         test_ids=["scene_0001", "scene_0002"])
    headline = html.split('<p class="headline">')[1].split("</p>")[0]
    for text in ("student <b>0.953", "CLIP zero-shot (zero_shot) <b>0.669", "supervised ceiling (ceiling) <b>0.989",
                 "gap closure <b>0.887"):
        assert text in headline, text
    run = html.split('<p class="run">')[1].split("</p>")[0]
    assert "ratio 0.1" in run and "seed 2" in run and "dataset seed 7" in run and "bf16 on cpu (x86_64 AVX512)" in run
    assert "<code>scene_0001</code>" in html and "<code>scene_0002</code>" in html  # examples by id
    assert "<td>cut: global + local views (cut)</td>" in html  # a reader's names, and the code's
