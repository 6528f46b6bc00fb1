"""The `method` param and the method registry (pipeline.method_registry, pipeline.methods, stages.method_params)."""

import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import yaml

from pipeline import method_registry
from pipeline.methods import METHOD_NAMES, METHODS
from pipeline.rules import Rule, rule_loss
from stages.common import Params, ParamsError
from stages.method_params import build_methods
from tests.test_params import ROOT


def tiny_params(tmp_path, **changes):
    """tests/tiny_params.yaml with top-level `changes` (None deletes a key; `a.b` reaches into a section)."""
    config = yaml.safe_load((ROOT / "tests" / "tiny_params.yaml").read_text())
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        node = config
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "params.yaml"


def test_every_method_the_issue_names_is_registered_in_order():
    assert METHOD_NAMES == ("none", "hst", "trm", "plmcl", "g2netpl", "large_loss", "label_distribution",
                            "prototypes", "cooccurrence")
    roles = {name: cls.ROLE for name, cls in METHODS.items()}
    assert roles == {"none": "rule", "hst": "online", "trm": "online", "plmcl": "rule", "g2netpl": "rule",
                     "large_loss": "rule", "label_distribution": "rule", "prototypes": "correct",
                     "cooccurrence": "correct"}


@pytest.mark.parametrize("method, rule, online, corrections", [
    ("none", "none", None, []),
    ("plmcl", "plmcl", None, []),
    ("hst", "none", "hst", []),
    (["cooccurrence", "trm", "large_loss", "prototypes"], "large_loss", "trm", ["prototypes", "cooccurrence"]),
])
def test_method_picks_each_roles_settings(tmp_path, method, rule, online, corrections):
    p = Params.load(tiny_params(tmp_path, method=method, unknown="negative"))
    methods = build_methods(p, ("correct", "rule", "online"))
    assert methods.rule.NAME == rule and methods.rule.unknown == "negative"  # every rule reads `unknown`
    assert (methods.online.NAME if methods.online else None) == online
    assert [m.NAME for m in methods.corrections] == corrections  # registration order, whatever the list's


@pytest.mark.parametrize("method, message", [
    ("plmc", "'method' names an unknown method 'plmc'"),
    (["hst", "trm"], "'method' names hst and trm, both online methods"),
    (["plmcl", "g2netpl"], "'method' names plmcl and g2netpl, both rule methods"),
    (["hst", "hst"], "'method' names a method twice"),
    (3, "'method' must be a method name or a list of them, got 3"),
])
def test_a_bad_method_fails_validation_naming_it(tmp_path, method, message):
    from stages.validate import validate

    with pytest.raises(ParamsError, match=message):
        validate(Params.load(tiny_params(tmp_path, method=method)))


def test_old_switches_without_method_still_work_with_one_line(tmp_path):
    """A params file from before `method`: its five switches pick the methods, with one deprecation line."""
    path = tiny_params(tmp_path, method=None, rule="g2netpl", hst__modules="ist", trm__enabled=False,
                       prototypes__threshold="dtl", cooccurrence__threshold="none")
    written = "no longer switch methods on: write 'method: \\[hst, g2netpl, prototypes\\]'"
    with pytest.warns(FutureWarning, match=written):
        methods = build_methods(Params.load(path), ("correct", "rule", "online"))
    assert methods.rule.NAME == "g2netpl" and methods.online.modules == "ist"
    assert [(m.NAME, m.rule.method) for m in methods.corrections] == [("prototypes", "dtl")]
    r = subprocess.run([sys.executable, "-c", "from stages.cli import main; main()", "validate"], cwd=tmp_path,
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("warning: params.yaml: 'rule', "), r.stderr


def test_old_switches_beside_method_are_one_clear_error(tmp_path):
    from stages.validate import validate

    path = tiny_params(tmp_path, rule="plmcl", hst__modules="none")
    with pytest.raises(ParamsError) as e:
        validate(Params.load(path))
    lines = [line.split(": ", 1)[1] for line in str(e.value).splitlines()[1:]]
    assert lines == ["'rule' is an old switch of 'method': remove it and name the method in 'method'",
                     "'hst.modules' = 'none' was an old off switch: 'method' switches methods now; remove the key"]


def test_a_new_method_is_one_registered_class(monkeypatch):
    """Registering a rule class is all it takes for the training loss to use its hook: nothing else names it."""
    monkeypatch.setattr(method_registry, "_METHODS", dict(method_registry._METHODS))

    @method_registry.register_method
    @dataclass(frozen=True)
    class FirstClassOnly(Rule):
        NAME: ClassVar[str] = "first_class_only"
        ENTRY_LOSS: ClassVar[bool] = True

        def keep(self, loss, unknown, epoch):
            return torch.zeros_like(loss, dtype=torch.bool).index_fill(1, torch.tensor([0]), True)

    assert method_registry.registered()["first_class_only"] is FirstClassOnly
    assert method_registry.selection_errors(("first_class_only", "plmcl")) == [
        "names first_class_only and plmcl, both rule methods: one trains at a time, pick one"]
    logits, targets = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.0, 1.0]])
    got = rule_loss(logits, targets, torch.zeros(1, 2, dtype=torch.bool), FirstClassOnly(), 0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :1], targets[:, :1])
    assert got.item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="registered twice"):
        method_registry.register_method(type("Other", (FirstClassOnly,), {"NAME": "first_class_only"}))


def test_correct_applies_the_chosen_transfers_in_turn():
    """Two `correct` methods: the second acts on the first's labels, and what each moved is kept."""
    from pipeline.cooccurrence import CooccurrenceTransfer
    from pipeline.correct import Correction, correct_with_known
    from pipeline.prototypes import PrototypeTransfer

    rng = np.random.default_rng(0)
    n, c, d = 80, 3, 6
    initial = rng.normal(size=(n, c)).astype(np.float32)
    emb, text = rng.normal(size=(n, d)), rng.normal(size=(c, d))
    labels = (rng.random((n, c)) < 0.5).astype(np.int8)
    known = rng.random((n, c)) < 0.4
    correction = Correction()
    protos, cooc = PrototypeTransfer(k=2, bank=20, gate="none"), CooccurrenceTransfer(gate="none")  # every move
    both = correct_with_known(initial, known, labels, correction, [protos, cooc], embeddings=lambda: (emb, text))
    alone = {m.NAME: correct_with_known(initial, known, labels, correction, [m], embeddings=lambda: (emb, text))
             for m in (protos, cooc)}
    assert np.array_equal(both.raised, alone["prototypes"].raised | alone["cooccurrence"].raised)
    assert np.array_equal(both.lowered, alone["prototypes"].lowered)
    assert set(both.store) == set(alone["prototypes"].store) | {"cooccurrence"}
    none = correct_with_known(initial, known, labels, correction, [])
    assert not none.raised.any() and none.store == {}
