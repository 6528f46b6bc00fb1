"""The held-out gate of the methods that train with the adapter in `sew` (`method_gate`; ours, in no paper).

With `unknown: pseudo` a method of `sew` (HST, TRM-ML, or a training rule: PLMCL, G2NetPL, LL-R, label
distributions) trains on top of CLIP's corrected pseudo labels, a setting none of the papers tests, and some of
them make the student worse than the known labels alone (README, Partial labels). Whether one does on a given
run can be measured before it is used: the known entries, drawn at random (`known: random`), are a sample of the
unknown ones with the truth attached. The gate hides a seeded share of them (the probe, `method_gate.probe`): they
carry their pseudo labels (`corrected.parquet`'s `pseudo` column, the corrected labels before the known ones
are written over them), exactly as an unknown entry does, in two trainings of the adapter, one with the method
and one with the known labels alone. The method is kept only if its adapter ranks the probe entries at least as
well as the baseline's: the mean over classes of the AP of the adapter's logits on the probe entries of each
class (a class with no probe positive or no probe negative is left out). Otherwise the run trains without it,
and its adapter and refined labels are the baseline's.

The transfers of `correct` have a gate of their own, per class (pipeline.transfer.held_out_gate): there the
method's moves are decided with a fold hidden from the method alone. A method of `sew` learns from the known
entries through the adapter, so the probe must be hidden from the whole training, and what is compared is the
trained adapter, whose losses move every class at once: the gate keeps or drops the method as a whole.
With `known: uncertain` or a person's answers the known entries are chosen, not drawn, and the probe is biased.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.metrics import average_precision
from pipeline.settings import Settings, setting
from pipeline.storage import atomic_path

GATES = ("held_out", "none")


@dataclass(frozen=True)
class MethodGate(Settings):
    """Section `method_gate`, read by `sew` only."""

    mode: str = setting("held_out", choices=GATES)  # held_out | none: every chosen method trains
    probe: float = setting(0.5, gt=0.0, lt=1.0)  # the share of the known entries the probe hides

    SECTION: ClassVar[str] = "method_gate"


def probe_entries(known: np.ndarray, share: float, seed: int) -> np.ndarray:
    """bool [N, C]: a seeded `share` of the known entries, each drawn independently."""
    known = np.asarray(known, bool)
    return known & (np.random.default_rng(seed).random(known.shape) < share)


def probe_ap(logits: np.ndarray, truth: np.ndarray, probe: np.ndarray) -> float:
    """The mean over classes of the AP of `logits` [N, C] on each class's probe entries against `truth` (bool);
    a class without a probe positive or negative is left out (NaN when no class is left)."""
    aps = []
    for c in range(logits.shape[1]):
        y = truth[probe[:, c], c]
        if y.any() and not y.all():
            aps.append(average_precision(y, logits[probe[:, c], c]))
    return float(np.mean(aps)) if aps else float("nan")


@dataclass(frozen=True)
class GateResult:
    kept: bool  # the method trains in the final run
    method_ap: float  # probe_ap of the adapter trained with the method (probe hidden)
    baseline_ap: float  # ... with the known labels alone
    probe_entries: int  # how many known entries the probe hid

    def line(self, name: str) -> str:
        verdict = "kept" if self.kept else "dropped: the run trains on the known labels alone"
        return (f"gate: {name} ranks the {self.probe_entries} held-out known entries at {self.method_ap:.4f} mAP, "
                f"the known labels alone at {self.baseline_ap:.4f}: {verdict}")


# fit(with_method, targets, known) → the trained adapter's logits on the train images [N, C]
Fit = Callable[[bool, np.ndarray, np.ndarray], np.ndarray]


def held_out_method_gate(fit: Fit, targets: np.ndarray, pseudo: np.ndarray, known: np.ndarray, share: float,
                         seed: int, cache: Path | None = None, run_id: str = "") -> GateResult:
    """Train with and without the method, the probe (probe_entries) hidden and carrying its `pseudo` labels, and
    keep the method if its adapter ranks the probe entries at least as well (probe_ap).

    targets [N, C]: the training labels (known entries written over `pseudo`); the truth of a known entry is
    targets > 0. `cache`: a JSON file that keeps the result of a run `run_id` names, so a stage stopped after
    the two trainings does not redo them."""
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("run_id") == run_id:
            return GateResult(**saved["result"])
    probe = probe_entries(known, share, seed)
    truth = np.asarray(targets) > 0
    probe_targets = np.where(probe, pseudo, targets).astype(np.float32)
    visible = np.asarray(known, bool) & ~probe
    method_ap = probe_ap(fit(True, probe_targets, visible), truth, probe)
    baseline_ap = probe_ap(fit(False, probe_targets, visible), truth, probe)
    # no class with both a positive and a negative probe entry: nothing measured, the chosen method stays
    kept = bool(np.isnan(method_ap) or method_ap >= baseline_ap)
    result = GateResult(kept, method_ap, baseline_ap, int(probe.sum()))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps({"run_id": run_id, "result": asdict(result)}))
    return result
