"""sew's held-out gate (pipeline.method_gate): the probe, its measure, the decision, and the stage's wiring."""

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from benchmarks.project import sh
from pipeline.method_gate import GateResult, MethodGate, held_out_method_gate, lead_sd, probe_ap, probe_images
from pipeline.metrics import average_precision


def test_the_probe_is_a_seeded_share_of_the_train_images():
    held = probe_images(1000, 0.3, seed=3)
    assert held.sum() == 300
    assert np.array_equal(held, probe_images(1000, 0.3, seed=3))
    assert not np.array_equal(held, probe_images(1000, 0.3, seed=4))
    assert probe_images(3, 0.01, 0).sum() == 1 and probe_images(3, 0.99, 0).sum() == 2  # never none, never all


def test_probe_ap_is_the_mean_class_ap_over_the_known_entries_only():
    truth = np.array([[1, 1, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], bool)
    logits = np.array([[0.9, 0.2, 0.1], [0.8, 0.3, 0.2], [0.1, 0.4, 0.3], [0.5, 0.25, 0.9]], np.float32)
    known = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 1], [0, 1, 1]], bool)
    # class 0 over rows 0–2, class 1 over rows 0, 1, 3; class 2 has one known positive (row 3), ranked first
    ap0 = average_precision(np.array([1, 0, 1], bool), logits[:3, 0])
    ap1 = average_precision(np.array([1, 1, 0], bool), logits[[0, 1, 3], 1])
    assert ap0 < 1 and ap1 < 1
    assert probe_ap(logits, truth, known) == pytest.approx(np.mean([ap0, ap1, 1.0]))
    # a class whose known entries hold no negative (or no positive) is left out, not counted as 0 or 1
    only_positive = known.copy()
    only_positive[:, 1] = [True, True, True, False]
    assert probe_ap(logits, truth, only_positive) == pytest.approx(np.mean([ap0, 1.0]))
    assert np.isnan(probe_ap(logits, truth, np.zeros_like(known)))


GATE = MethodGate()  # probe 0.3, margin 1


def _labels(n: int = 300, c: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((n, c)) < 0.3, rng.random((n, c)) < 0.4  # truth, known


def test_the_gate_holds_the_probe_out_of_both_trainings_and_keeps_the_better_ranking():
    truth, known = _labels()
    held = probe_images(len(truth), 0.3, 7)
    seen = []

    def fit(with_method, train):
        seen.append(with_method)
        assert np.array_equal(train, ~held)  # both train on the same images, the probe's held out
        noise = np.random.default_rng(int(with_method)).normal(0, 0.1 if with_method else 3.0, truth.shape)
        return (truth + noise)[~train]  # the method's adapter ranks the held-out images far better

    result = held_out_method_gate(fit, truth, known, GATE, 7)
    assert sorted(seen) == [False, True] and result.kept and result.method_ap > result.baseline_ap
    assert result.probe_images == 90 and result.probe_entries == int(known[held].sum())
    worse = held_out_method_gate(lambda m, t: fit(not m, t), truth, known, GATE, 7)
    assert not worse.kept and worse.method_ap < worse.baseline_ap
    # only the known entries count: the same logits with the unknown entries' truth flipped decide the same
    flipped = np.where(known, truth, ~truth)
    again = held_out_method_gate(lambda m, t: fit(m, t), flipped, known, GATE, 7)
    assert again == result


def test_the_lead_sd_is_the_bootstrap_noise_of_the_difference_on_the_same_images():
    truth, known = _labels(n=200)
    rng = np.random.default_rng(1)
    base = truth + rng.normal(0, 1.0, truth.shape)
    assert lead_sd(base, base, truth, known, 0) == 0.0  # one adapter against itself: no noise in the lead
    near, far = base + rng.normal(0, 0.1, truth.shape), base + rng.normal(0, 1.0, truth.shape)
    small, large = lead_sd(near, base, truth, known, 0), lead_sd(far, base, truth, known, 0)
    assert 0 < small < large  # the more the two rankings differ image by image, the noisier the lead
    assert lead_sd(far, base, truth, known, 0) == large and lead_sd(far, base, truth, known, 1) != large  # seeded
    # by hand: the same resamples, each scored with probe_ap
    draw = np.random.default_rng(0)
    leads = []
    for _ in range(200):
        r = draw.integers(0, len(truth), len(truth))
        leads.append(probe_ap(far[r], truth[r], known[r]) - probe_ap(base[r], truth[r], known[r]))
    assert large == pytest.approx(np.std(leads, ddof=1))


def test_a_lead_within_its_noise_keeps_the_known_labels_alone():
    truth, known = _labels()
    held = probe_images(len(truth), 0.3, 7)
    rng = np.random.default_rng(5)
    base = (truth + rng.normal(0, 1.0, truth.shape))[held]
    better = base + np.where(truth[held], 0.08, 0.0)  # a small, real lead: positives a little higher

    def fit(with_method, train):
        return better if with_method else base

    lead = probe_ap(better, truth[held], known[held]) - probe_ap(base, truth[held], known[held])
    sd = lead_sd(better, base, truth[held], known[held], 7)
    assert 0 < lead  # the method does lead on the probe ...
    for margin in (0.0, lead / sd * 0.9, lead / sd * 1.1, 1.0):
        result = held_out_method_gate(fit, truth, known, MethodGate(margin=margin), 7)
        assert result.lead_sd == pytest.approx(sd) and result.margin == margin
        assert result.kept == (lead >= margin * sd)  # ... and is kept only where the lead reaches margin · sd
    assert held_out_method_gate(fit, truth, known, MethodGate(margin=0.0), 7).kept
    assert not held_out_method_gate(fit, truth, known, MethodGate(margin=lead / sd * 1.1), 7).kept
    tie = held_out_method_gate(lambda m, t: base, truth, known, GATE, 7)
    assert not tie.kept and tie.lead_sd == 0.0 and tie.method_ap == tie.baseline_ap  # a tie: the known labels


def test_the_gate_keeps_what_it_measured_across_a_restart(tmp_path):
    truth, known = _labels()
    cache = tmp_path / "gate.json"

    def ranks(sign):
        return lambda m, train: (truth * (sign if m else -sign))[~train].astype(float)

    first = held_out_method_gate(ranks(1.0), truth, known, GATE, 0, cache, "run-a")

    def never(*_):
        raise AssertionError("a finished measurement is trained again")

    assert held_out_method_gate(never, truth, known, GATE, 0, cache, "run-a") == first
    # the verdict a label table keeps is the one measured; a table the gate never decided keeps none
    assert GateResult.of_table(first.metadata()) == first and GateResult.of_table({"classes": "[]"}) is None
    again = held_out_method_gate(ranks(-1.0), truth, known, GATE, 0, cache, "run-b")  # another run's file
    assert first.kept and not again.kept


def test_without_a_measurable_class_the_chosen_method_stays():
    truth, known = _labels()
    result = held_out_method_gate(lambda m, t: np.zeros((int((~t).sum()), 4)), truth & False, known, GATE, 0)
    assert result.kept and np.isnan(result.method_ap)


@pytest.fixture(scope="module")
def masked(tiny_build, tmp_path_factory):
    """The tiny project with half of the labels known, corrected, and a method of sew chosen: ready for `sew`."""
    project = tiny_build.copy_to(tmp_path_factory.mktemp("gate") / "p")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params.update(ratio=0.5, method="label_distribution")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("mlpl validate && mlpl mask && mlpl correct", project)
    return project


def _sew(project, monkeypatch, **changes):
    """Run the `sew` stage in-process in `project` with the sew section changed; its adapter and refined table."""
    from stages import sew
    from stages.common import Params

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["method_gate"].update(changes)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(project)
    sew.run(Params.load(project / "params.yaml"))
    adapter = torch.load(project / "data" / "models" / "adapter.pt", weights_only=True)["state_dict"]
    return adapter, pd.read_parquet(project / "data" / "labels" / "refined.parquet")


@pytest.mark.e2e
@pytest.mark.parametrize("kept", [False, True])
def test_a_dropped_method_trains_as_the_known_labels_alone_and_a_kept_one_as_without_the_gate(
        masked, tmp_path, monkeypatch, kept):
    from stages import sew

    project = shutil.copytree(masked, tmp_path / "p", symlinks=True)
    for name in ("data/models/adapter.pt", "data/labels/refined.parquet"):  # DVC links them into the cache
        (project / name).unlink(missing_ok=True)
    calls = []

    def decided(fit, *args, **kwargs):
        calls.append(1)
        return GateResult(kept, 0.5, 0.6, 0.01, 1.0, 3, 5)

    monkeypatch.setattr(sew, "held_out_method_gate", decided)
    adapter, refined = _sew(project, monkeypatch, mode="held_out")
    assert calls == [1]
    monkeypatch.undo()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["method"] = "label_distribution" if kept else "none"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    same_adapter, same_refined = _sew(project, monkeypatch, mode="none")  # no gate: the method always trains
    assert all(torch.equal(adapter[k], same_adapter[k]) for k in adapter)
    assert np.array_equal(np.stack(refined.refined), np.stack(same_refined.refined))
    ablated = yaml.safe_load((project / "params.yaml").read_text())
    ablated["method"] = "none" if kept else "label_distribution"
    (project / "params.yaml").write_text(yaml.safe_dump(ablated, sort_keys=False))
    other, _ = _sew(project, monkeypatch, mode="none")
    assert not all(torch.equal(adapter[k], other[k]) for k in adapter)  # the two runs differ: the test can fail


@pytest.mark.e2e
def test_the_stage_measures_the_method_and_says_what_it_decided(masked, tmp_path):
    project = shutil.copytree(masked, tmp_path / "p", symlinks=True)
    for name in ("data/models/adapter.pt", "data/labels/refined.parquet"):
        (project / name).unlink(missing_ok=True)
    out = sh("mlpl sew", project).stdout
    verdict = json.loads(pq.read_schema(project / "data" / "labels" / "refined.parquet").metadata[b"method_gate"])
    assert (f"gate: on {verdict['probe_images']} held-out train images ({verdict['probe_entries']} known entries) "
            "the adapter with label_distribution ranks at") in out
    assert verdict["probe_images"] == 7 and verdict["probe_entries"] > 0  # 0.3 of the 24 train images
    assert verdict["margin"] == 1.0
    # the bootstrap's sd is 0 only where the lead never varies: both adapters rank every resample alike (on
    # this tiny probe of 7 images both may rank each class's few known entries perfectly)
    assert verdict["lead_sd"] > 0 or verdict["method_ap"] == verdict["baseline_ap"], verdict
    lead = verdict["method_ap"] - verdict["baseline_ap"]
    assert verdict["kept"] == (lead > 0 and lead >= verdict["lead_sd"])
    assert not (project / "data" / ".sew.work").exists()  # the probes' checkpoints and the measurement go too
