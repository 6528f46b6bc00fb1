"""Training loops resume from a checkpoint with exactly the result of an uninterrupted run."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import clip
from pipeline.adapter import adapter_for
from pipeline.em import train_adapter_em
from pipeline.hst import Hst, HstSettings
from pipeline.images import ResizedImages
from pipeline.resume import Checkpointer, fingerprint
from pipeline.scenes import SceneConfig
from pipeline.sew import SewDataset, SewSettings
from pipeline.student import StudentTraining, train_small_cnn
from pipeline.toy_teacher import TeacherTraining, ViewSampling, make_scene_pool, train_toy_teacher
from tests.conftest import TINY_MODEL, make_rule


class Preempted(Exception):
    pass


class DiesAfterSaving(Checkpointer):
    """Saves like the real one, then dies (as a SIGKILL would) after the n-th save."""

    def __init__(self, *args, die_after: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.saves, self.die_after = 0, die_after

    def save(self, state):
        super().save(state)
        self.saves += 1
        if self.saves == self.die_after:
            raise Preempted


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.fixture
def image_paths(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(10):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_fingerprint_changes_with_settings_and_file_content(tmp_path):
    f = tmp_path / "x"
    f.write_text("a")
    before = fingerprint({"lr": 1}, f)
    assert before == fingerprint({"lr": 1}, f) != fingerprint({"lr": 2}, f)
    f.write_text("b")
    assert fingerprint({"lr": 1}, f) != before


def test_checkpoint_of_another_run_is_ignored(tmp_path):
    Checkpointer(tmp_path, "run-a", log=lambda m: None).save({"position": 3})
    assert Checkpointer(tmp_path, "run-a", log=lambda m: None).restore()["position"] == 3
    messages = []
    assert Checkpointer(tmp_path, "run-b", log=messages.append).restore() is None
    assert "other settings" in messages[0]
    (tmp_path / "state.pt").write_bytes(b"torn")
    assert Checkpointer(tmp_path, "run-a", log=lambda m: None).restore() is None


@pytest.mark.parametrize("rule,hst", [("none", "none"), ("plmcl", "none"), ("none", "both")])
def test_sew_em_resumes_exactly(tmp_path, image_paths, rule, hst):
    model = clip.create_model(TINY_MODEL)
    z = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    frozen[::3, 1] = True
    if hst != "none":  # whole rows known: pairs of known positives for IST, positives for CST's prototypes
        frozen[::2] = True
    s = SewSettings(epochs=4, batch_size=4, max_overlays=2)

    def run(checkpointer):
        torch.manual_seed(0)
        adapter = adapter_for(model, 3, 32, hidden=16, heads=2)
        ds = SewDataset(image_paths, 32, np.arange(10), s)
        transfer = None if hst == "none" else Hst(HstSettings(hst, start_epoch=1, prototype_every=1, hidden=8), 3, 16)
        return adapter, train_adapter_em(model.visual, clip.normalizer_of(model), adapter, ds, z, frozen, s,
                                         rule=make_rule(rule), checkpointer=checkpointer, transfer=transfer)

    ref_adapter, ref = run(None)
    with pytest.raises(Preempted):
        run(DiesAfterSaving(tmp_path / "work", "r", die_after=2, log=lambda m: None))
    adapter, resumed = run(Checkpointer(tmp_path / "work", "r", log=lambda m: None))
    assert np.array_equal(resumed, ref) and _states_equal(adapter, ref_adapter)


def test_small_cnn_resumes_exactly(tmp_path, image_paths):
    targets = np.random.default_rng(2).normal(size=(10, 2)).astype(np.float32)
    training = StudentTraining(epochs=3, batch_size=4, width=4)
    kwargs = dict(known=np.eye(10, 2, dtype=bool), rule=make_rule("g2netpl"))
    ref = train_small_cnn(ResizedImages(image_paths, 16), targets, 16, training, **kwargs)
    with pytest.raises(Preempted):
        train_small_cnn(ResizedImages(image_paths, 16), targets, 16, training, **kwargs,
                        checkpointer=DiesAfterSaving(tmp_path, "r", die_after=1, log=lambda m: None))
    resumed = train_small_cnn(ResizedImages(image_paths, 16), targets, 16, training, **kwargs,
                              checkpointer=Checkpointer(tmp_path, "r", log=lambda m: None))
    assert _states_equal(resumed, ref)


def test_cdul_student_resumes_exactly(tmp_path, image_paths):
    """Killed after an update epoch, CDUL's student resumes to the same network and the same refined labels."""
    from pipeline.cdul_student import CdulTraining, train_cdul_student

    initial = np.random.default_rng(3).normal(size=(10, 3)).astype(np.float32)
    training, cdul = StudentTraining(epochs=3, batch_size=4, width=4), CdulTraining(update_every=1)
    ref, ref_labels = train_cdul_student(ResizedImages(image_paths, 16), initial, 16, training, cdul)
    with pytest.raises(Preempted):
        train_cdul_student(ResizedImages(image_paths, 16), initial, 16, training, cdul,
                           checkpointer=DiesAfterSaving(tmp_path, "r", die_after=1, log=lambda m: None))
    resumed, labels = train_cdul_student(ResizedImages(image_paths, 16), initial, 16, training, cdul,
                                         checkpointer=Checkpointer(tmp_path, "r", log=lambda m: None))
    assert _states_equal(resumed, ref) and np.array_equal(labels, ref_labels)


@pytest.mark.e2e
def test_toy_teacher_resumes_exactly(tmp_path):
    scenes = SceneConfig(image_size=32, n_classes=4, max_small=2)
    pool = make_scene_pool(32, scenes, seed=0)
    training = TeacherTraining(steps=6, batch_size=8, warmup=2)

    def run(checkpointer):
        torch.manual_seed(0)
        model = clip.create_model(TINY_MODEL)
        return train_toy_teacher(model, clip.tokenizer_for(TINY_MODEL), scenes.classes, pool, training,
                                 ViewSampling(), checkpointer=checkpointer)

    ref = run(None)
    with pytest.raises(Preempted):
        run(DiesAfterSaving(tmp_path, "r", every=2, die_after=2, log=lambda m: None))
    assert _states_equal(run(Checkpointer(tmp_path, "r", every=2, log=lambda m: None)), ref)


def test_fingerprint_hashes_arrays_by_dtype_shape_and_content():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    fp = fingerprint({"lr": 1}, a)
    assert fp == fingerprint({"lr": 1}, a.copy())
    b = a.copy()
    b[1, 2] = np.nextafter(b[1, 2], np.float32(10))  # one ulp in one entry
    assert fingerprint({"lr": 1}, b) != fp
    assert fingerprint({"lr": 1}, a.astype(np.float64)) != fp
    assert fingerprint({"lr": 1}, a.reshape(3, 2)) != fp
    assert fingerprint({"lr": 1}, np.asfortranarray(a)) == fp  # memory layout is not content
