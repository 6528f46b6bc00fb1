"""Label correction (TailorCLIP §3.3.1): raise each image's top-β confidences before distillation.

All methods act on logits z. `sqrt` is the paper's order-persistent g(z) = S⁻¹(√S(z)); `linear`
(S⁻¹((1+S(z))/2)) is the monotone alternative of its Table 8; `hard` is the FixMatch-style ablation
that sets confident top-β entries to positive; `none` leaves z unchanged.
Monotone corrections never reorder entries within an image: only top-β entries rise, and g(z) ≥ z.

`calibrate_per_class` (pipeline.logits; ours, `correct.calibration: median`) then shifts each class's logits so that its
median sits at −margin. Eq. 7 takes a max over dozens of views, which lifts every entry, negatives too
(their mean logit reaches +0.6 on the embedded benchmark), and a student trained on such targets puts
most of its probabilities above 0.5. A class present in fewer than half the images has a negative as its
median, so the shift puts typical negatives at σ(−margin). It changes no class's ranking, so no label mAP.

`correct.calibration: known` (ours, with known labels) then fits each class's shifted logits to its known
train entries (`calibrate_to_known`, pipeline.calibration: Platt scaling, a·z + b by a logistic fit pulled towards
(1, 0)), so that an unknown entry's σ is the share of known entries present at its logit. The median shift
guesses where a class's 0.5 falls; the known entries, drawn at random, measure it: on contexts world 2 (draw
seed 0) the fits range from a = 0.75, b = −4.6 (a rare class, whose negatives the shift left at σ ≈ 0.3) to
b = +1.9 (a class in 60 % of the images, whose median is a positive). Monotone per class, so no unknown
entry overtakes another and the label mAP all but stays (a fitted logit may pass a known entry's ±9.2: the
corrected mAP moved by ≤ 0.0002 in the README's runs), but the BCE targets the adapter and EM learn from do.
A class with fewer than KNOWN_MIN_EACH known positives or negatives keeps its shift; with nothing known it
is the median calibration. Entries chosen by a review (`known: uncertain`, a person's answers) are not a
random sample of the class, and the fit is biased towards the boundary they were chosen at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import ClassVar

import numpy as np

from pipeline.calibration import calibrate_to_known
from pipeline.logits import calibrate_per_class, logit, sigmoid
from pipeline.metrics import inversions
from pipeline.settings import Settings, setting
from pipeline.transfer import CorrectTransfer, apply_transfer

METHODS = ("sqrt", "linear", "hard", "none")
CALIBRATIONS = ("median", "known", "none")
KNOWN_MIN_EACH = 3  # `calibration: known` fits a class with at least this many known positives and negatives
SOURCES = ("z0", "tiles", "crops", "cdul", "cut")  # the rungs of the initial label table
POSITIVE_LOGIT = float(np.log(0.9999 / 0.0001))  # a label known (or declared) present
NEGATIVE_LOGIT = -POSITIVE_LOGIT


def top_beta_mask(z: np.ndarray, beta: int) -> np.ndarray:
    """bool [N, C]: the β largest entries of each row (ties broken by class index)."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    mask = np.zeros(z.shape, dtype=bool)
    if beta == 0:
        return mask
    top = np.argsort(-z, axis=1, kind="stable")[:, : min(beta, z.shape[1])]
    np.put_along_axis(mask, top, True, axis=1)
    return mask


def correct_labels(z: np.ndarray, beta: int, method: str = "sqrt", hard_threshold: float = 0.5) -> np.ndarray:
    """Corrected logits [N, C] (float32)."""
    if method not in METHODS:
        raise ValueError(f"correct.method must be one of {METHODS}, got {method!r}")
    z = np.asarray(z, dtype=np.float64)
    top = top_beta_mask(z, beta)
    p = sigmoid(z)
    if method == "sqrt":
        new = logit(np.sqrt(p), eps=1e-7)
    elif method == "linear":
        new = logit((1.0 + p) / 2.0, eps=1e-7)
    elif method == "hard":
        new = np.where(p >= hard_threshold, POSITIVE_LOGIT, z)
    else:
        new = z
    return np.where(top, new, z).astype(np.float32)


def apply_known_labels(z: np.ndarray, known: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Overwrite known entries: known positives → high confidence, known negatives → low."""
    known = np.asarray(known).astype(bool)
    forced = np.where(np.asarray(labels) > 0, POSITIVE_LOGIT, NEGATIVE_LOGIT)
    return np.where(known, forced, z).astype(np.float32)


@dataclass(frozen=True)
class Correction(Settings):
    """Section `correct`: which estimate to correct, and how."""

    source: str = setting("cut", choices=SOURCES)  # a rung of the initial label table
    method: str = setting("sqrt", choices=METHODS)
    beta: int = setting(1, ge=0)
    hard_threshold: float = setting(0.5, ge=0.0, le=1.0)
    calibration: str = setting("known", choices=CALIBRATIONS)
    margin: float = setting(1.0, ge=0.0)

    SECTION: ClassVar[str] = "correct"


@dataclass
class Corrected:
    target: np.ndarray  # [N, C] corrected logits, known entries written over
    raised: np.ndarray  # bool [N, C]: unknown entries a transfer raised
    lowered: np.ndarray  # bool [N, C]: unknown entries a transfer lowered
    store: dict  # the prototypes and similarities to keep (data/prototypes.zarr)
    calibrated: np.ndarray | None = None  # bool [C]: the classes `calibration: known` fitted (None: no fit ran)


def correct_with_known(initial: np.ndarray, known: np.ndarray, labels: np.ndarray, correction: Correction,
                       transfers: Sequence[CorrectTransfer] = (),
                       embeddings: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
                       train: np.ndarray | None = None) -> Corrected:
    """Correct `initial` [N, C], transfer the known labels (ratio > 0) to unknown entries, then write the
    known entries over everything, so they always win.

    known [N, C] bool, labels [N, C] the true labels (read only where known). `transfers`: the `correct`-role
    methods (pipeline.prototypes, pipeline.cooccurrence), applied in turn, each on the labels the previous left;
    `embeddings()` returns the (image, text) embeddings a transfer may need, read once, when one first asks. `train`
    (bool [N]; all rows if None): the rows whose statistics shape the labels, the calibration's medians and
    known-entry fits and the prototype bank's top-up candidates; the other rows (test) are corrected with them
    but never shape them.
    """
    c = correction
    target = correct_labels(initial, c.beta, c.method, c.hard_threshold)
    if c.calibration in ("median", "known"):
        target = calibrate_per_class(target, c.margin, train)
    known = np.asarray(known, bool)
    any_known = bool(known.any())
    calibrated = None
    if c.calibration == "known" and any_known:
        rows = known if train is None else known & np.asarray(train, bool)[:, None]
        target, calibrated = calibrate_to_known(target, rows, labels, KNOWN_MIN_EACH)
    raised = np.zeros(known.shape, bool)
    lowered = raised.copy()
    store: dict = {}
    embeddings = cache(embeddings) if embeddings is not None else None  # a gated transfer asks once per fold
    for transfer in transfers if any_known else ():
        moved = transfer.transfer(target, known, labels, embeddings, train)
        target = apply_transfer(target, moved.raised, moved.lowered, transfer.raise_logit)
        raised, lowered = raised | moved.raised, lowered | moved.lowered
        store.update(moved.store)
    if any_known:  # partial labels: what is known is never guessed
        target = apply_known_labels(target, known, labels)
    return Corrected(target, raised, lowered, store, calibrated)


def train_label_figures(truth: np.ndarray, before: np.ndarray, corrected: Corrected,
                        train: np.ndarray) -> dict[str, float | int | None]:
    """What `mlpl correct` prints about the train labels it made, from the train rows only (a test row's
    truth never enters a figure about train labels): the ranking inversions against `truth` of `before`
    (the source rung) and of the corrected logits, and the share of raised entries truly positive and of
    lowered entries truly negative (None where no entry moved)."""
    train = np.asarray(train, bool)
    truth = np.asarray(truth)
    up, down = corrected.raised & train[:, None], corrected.lowered & train[:, None]
    return {"inversions_before": inversions(truth[train], before[train]),
            "inversions_after": inversions(truth[train], corrected.target[train]),
            "raised_truly_positive": float(truth[up].mean()) if up.any() else None,
            "lowered_truly_negative": float(1 - truth[down].mean()) if down.any() else None}
