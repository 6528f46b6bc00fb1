"""The held-out gate of the methods that train with the adapter in `sew` (`method_gate`; ours, in no paper).

With `unknown: pseudo` a method of `sew` (HST, TRM-ML, or a training rule: PLMCL, G2NetPL, LL-R, label
distributions) trains on top of CLIP's corrected pseudo labels, a setting none of the papers tests, and some of
them make the student worse than the known labels alone (README, Partial labels). Whether one does on a given
run can be measured before it is used, as a validation split would: a seeded share of the train images (the
probe, `method_gate.probe`) is held out of two trainings of the adapter, one with the method and one with the
known labels alone, and each adapter predicts the held-out images, as the student predicts the test images. The
known entries of those images, drawn at random (`known: random`), are a sample of their entries with the truth
attached; each adapter is scored by the mean over classes of the AP of its logits on the probe's known entries
of each class (a class with no known positive or negative there is left out). The method is kept only if its
adapter leads the baseline's, by at least `method_gate.margin` times the noise of that lead: the sd of the
difference over bootstrap resamples of the probe's images (both adapters scored on the same resample). A tie
goes to the known labels alone. Otherwise the run trains without the method, and its adapter and refined labels
are the baseline's.

Why a margin: the probe holds a few hundred known entries (~475 on the contexts benchmark at `ratio: 0.1`), and
with `margin: 0` (keep on any lead) the gate let through one harmful draw in three for HST's CST (contexts world
1, student −0.020) and for label distributions on the AVX2 fp32 path (world 0, −0.018). `margin: 1` asks for a
lead the probe can tell from its noise (a one-sided test at about 84 %); it was set before any run, not tuned.
Measured on contexts world 1 (README): the lead's sd there is 0.01–0.03, larger than the methods' gains, and the
gate dropped every method on every draw: it does no harm and lets no gain through.

The transfers of `correct` have a gate of their own, per class (pipeline.transfer.held_out_gate): there a fold
of the known entries is hidden from the method alone, which decides on them. A method of `sew` learns the known
entries through the adapter, and its losses move every class at once: the probe is held out of the whole
training, and the gate keeps or drops the method as a whole. Measured first on the train images' own entries
(half the known entries hidden from training, carrying their pseudo labels), it dropped label distributions on
a draw where they raised the student's test mAP by 0.01: an adapter's ranking of the entries it trained on is
not how it predicts images it never saw. With `known: uncertain` or a person's answers the known entries are
chosen, not drawn, and the probe is biased.
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
RESAMPLES = 200  # bootstrap resamples of the probe's images for the sd of the method's lead
METADATA_KEY = "method_gate"  # the refined label table's metadata key of the verdict (GateResult)


@dataclass(frozen=True)
class MethodGate(Settings):
    """Section `method_gate`, read by `sew` only."""

    mode: str = setting("held_out", choices=GATES)  # held_out | none: every chosen method trains
    probe: float = setting(0.3, gt=0.0, lt=1.0)  # the share of the train images the probe holds out
    margin: float = setting(1.0, ge=0.0)  # the method's lead must reach this many sds of its bootstrap noise

    SECTION: ClassVar[str] = "method_gate"


def probe_images(n: int, share: float, seed: int) -> np.ndarray:
    """bool [n]: a seeded `share` of the train images (at least one, never all), held out of training."""
    order = np.random.default_rng(seed).permutation(n)
    held = np.zeros(n, bool)
    held[order[:min(n - 1, max(1, round(share * n)))]] = True
    return held


def lead_sd(method: np.ndarray, baseline: np.ndarray, truth: np.ndarray, known: np.ndarray, seed: int,
            resamples: int = RESAMPLES) -> float:
    """The sd of probe_ap(method) − probe_ap(baseline) (logits [n, C] of the same n images) over seeded bootstrap
    resamples of the images, both scored on each resample (NaN when no resample measures anything)."""
    rng = np.random.default_rng(seed)
    leads = []
    for _ in range(resamples):
        rows = rng.integers(0, len(truth), len(truth))
        leads.append(probe_ap(method[rows], truth[rows], known[rows]) - probe_ap(baseline[rows], truth[rows],
                                                                                   known[rows]))
    measured = np.asarray(leads)[~np.isnan(leads)]
    return float(np.std(measured, ddof=1)) if len(measured) > 1 else float("nan")


def probe_ap(logits: np.ndarray, truth: np.ndarray, known: np.ndarray) -> float:
    """The mean over classes of the AP of `logits` [n, C] on each class's `known` entries against `truth` (bool);
    a class without a known positive or negative is left out (NaN when no class is left)."""
    aps = []
    for c in range(logits.shape[1]):
        y = truth[known[:, c], c]
        if y.any() and not y.all():
            aps.append(average_precision(y, logits[known[:, c], c]))
    return float(np.mean(aps)) if aps else float("nan")


@dataclass(frozen=True)
class GateResult:
    kept: bool  # the method trains in the final run
    method_ap: float  # probe_ap of the adapter trained with the method (the probe's images held out)
    baseline_ap: float  # ... with the known labels alone
    lead_sd: float  # the bootstrap sd of method_ap − baseline_ap (lead_sd)
    margin: float  # the lead kept the method if it reached margin · lead_sd
    probe_images: int  # how many train images the probe held out
    probe_entries: int  # their known entries, which the two adapters are measured on

    def metadata(self) -> dict[str, str]:
        """The verdict as the refined label table's schema metadata (read back by `of_table`)."""
        return {METADATA_KEY: json.dumps(asdict(self))}

    @classmethod
    def of_table(cls, metadata: dict[str, str]) -> GateResult | None:
        """The verdict a label table's metadata keeps, or None where the gate did not decide."""
        return cls(**json.loads(metadata[METADATA_KEY])) if METADATA_KEY in metadata else None

    def line(self, name: str) -> str:
        verdict = "kept" if self.kept else "dropped: the run trains on the known labels alone"
        return (f"gate: on {self.probe_images} held-out train images ({self.probe_entries} known entries) the "
                f"adapter with {name} ranks at {self.method_ap:.4f} mAP, with the known labels alone at "
                f"{self.baseline_ap:.4f}, a lead of {self.method_ap - self.baseline_ap:+.4f} against "
                f"{self.margin:g} × its noise (sd {self.lead_sd:.4f}): {verdict}")


# fit(with_method, train) → the logits [n_held_out, C] on the held-out images (~train, in order) of an adapter
# trained on the images `train` (bool [N]) selects
Fit = Callable[[bool, np.ndarray], np.ndarray]


def held_out_method_gate(fit: Fit, truth: np.ndarray, known: np.ndarray, gate: MethodGate, seed: int,
                         cache: Path | None = None, run_id: str = "") -> GateResult:
    """Train with and without the method on the train images less a probe (probe_images, `gate.probe`), and keep
    the method if its adapter's ranking of the probe's known entries (`truth` [N, C] bool, read where `known`;
    probe_ap) leads the baseline's, by at least `gate.margin` sds of that lead (lead_sd). `cache`: a JSON file
    that keeps the result of a run `run_id` names, so a stage stopped after the two trainings does not redo them."""
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("run_id") == run_id:
            return GateResult(**saved["result"])
    held = probe_images(len(known), gate.probe, seed)
    truth, known = np.asarray(truth, bool)[held], np.asarray(known, bool)[held]
    method, baseline = fit(True, ~held), fit(False, ~held)
    method_ap, baseline_ap = probe_ap(method, truth, known), probe_ap(baseline, truth, known)
    sd = lead_sd(method, baseline, truth, known, seed)
    # no class with both a known positive and a known negative in the probe: nothing measured, the method stays
    # (and with one image nothing resamples: the lead alone decides)
    lead = method_ap - baseline_ap
    kept = bool(np.isnan(method_ap) or (lead > 0 and lead >= gate.margin * np.nan_to_num(sd)))
    result = GateResult(kept, method_ap, baseline_ap, sd, gate.margin, int(held.sum()), int(known.sum()))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps({"run_id": run_id, "result": asdict(result)}))
    return result
