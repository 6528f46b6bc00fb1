"""Transfer of known labels to unknown ones (partial labels, ratio > 0), used by `correct`.

Cross-image (HST §3.3 CST, TRM-ML §3.4): per-class prototypes. Visual: K-means over the image
embeddings of the known positives of a class, topped up to `bank` members with the images the
pseudo labels rank highest for it (TRM-ML's memory bank of top responses) when few are known.
Textual: the teacher's class embedding. An entry's visual similarity is the mean cosine to its class's
visual prototypes; its text similarity the cosine to the class's text embedding.
Intra-image (HST §3.2 IST): co-occurrence P(i | j) counted over pairs of known labels; an entry's
score is Σ over the image's other known positives j of P(i | j) (HST eq. 4, with a dataset-level P).

Thresholds are learnt from the known entries only, per class:
- `ema` (TRM-ML eq. 9–11): θ⁺ / θ⁻ are exponential moving averages, over seeded minibatches of the
  known entries, of the mean similarity of known positives / negatives. Eq. 10 is garbled in the
  paper; we read it as: raise when s ≥ θ⁺ (as similar as an average known positive), lower when
  s ≤ θ⁻, otherwise leave the entry alone. The first batch that has a value initialises θ.
- `dtl` (HST eq. 12–16): θ minimises the partial BCE of σ((s − θ)/τ) against the known labels by
  gradient descent. HST has no temperature; cosine gaps are ~0.05, so without τ the sigmoid is flat
  and θ drifts with class balance. HST only raises labels.
With prototypes, the visual and the text modality must agree (TRM-ML eq. 12).

The held-out gate (`gate: held_out`, ours, in neither paper): the known entries are split into `gate_folds`
seeded folds; each fold's entries are decided by the method with that fold hidden, so they are unknown to it
as the entries it really moves are; a class keeps its moves only if those held-out moves raise the AP of its
known entries' corrected labels (held_out_moves, held_out_gate). With `known: random` the known entries are a
random sample of all entries, so this measures, with the truth attached, what the moves do to the unknown ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipeline.logits import sigmoid
from pipeline.metrics import average_precision
from pipeline.settings import Settings, setting

THRESHOLDS = ("ema", "dtl")
GATES = ("none", "held_out")


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def spherical_kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    """k unit-norm centres of the rows of x (cosine K-means, k-means++ seeding). [min(k, n), D]"""
    x = unit_rows(x)
    n = len(x)
    k = min(k, n)
    if k == 0:
        return np.zeros((0, x.shape[1]), x.dtype)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        d = 1.0 - np.max(x @ np.stack(centres).T, axis=1)  # cosine distance to the nearest centre
        d = np.maximum(d, 0)
        centres.append(x[rng.choice(n, p=d / d.sum())] if d.sum() > 0 else x[rng.integers(n)])
    c = np.stack(centres)
    for _ in range(iters):
        assign = np.argmax(x @ c.T, axis=1)
        new = c.copy()
        for j in range(k):
            members = x[assign == j]
            if len(members):  # an empty cluster keeps its centre
                m = members.sum(0)
                new[j] = m / max(np.linalg.norm(m), 1e-12)
        if np.allclose(new, c):
            break
        c = new
    return c


@dataclass(frozen=True)
class PrototypeBank:
    visual: np.ndarray  # [C, K, D], rows of a class beyond counts[c] are zero
    counts: np.ndarray  # [C] prototypes per class
    text: np.ndarray  # [C, D]


def build_prototypes(emb: np.ndarray, text: np.ndarray, pseudo: np.ndarray, known: np.ndarray,
                     labels: np.ndarray, k: int, bank: int, iters: int = 20, seed: int = 0,
                     candidates: np.ndarray | None = None) -> PrototypeBank:
    """Prototypes per class from the known positives, topped up to `bank` members by the entries that
    `pseudo` (logits [N, C]) ranks highest among those unknown in the `candidates` rows (bool [N]: the train
    rows; all rows if None)."""
    n_cls, dim = text.shape
    visual = np.zeros((n_cls, k, dim), np.float32)
    counts = np.zeros(n_cls, np.int64)
    for c in range(n_cls):
        pos = np.flatnonzero(known[:, c] & (labels[:, c] > 0))
        if len(pos) < bank:
            pool = np.flatnonzero(~known[:, c] & (True if candidates is None else np.asarray(candidates, bool)))
            extra = pool[np.argsort(-pseudo[pool, c], kind="stable")[: bank - len(pos)]]
            pos = np.concatenate([pos, extra])
        centres = spherical_kmeans(emb[pos].astype(np.float64), k, iters, seed + c)
        visual[c, : len(centres)] = centres
        counts[c] = len(centres)
    text = unit_rows(text)
    return PrototypeBank(visual, counts, text.astype(np.float32))


def prototype_similarity(emb: np.ndarray, bank: PrototypeBank) -> tuple[np.ndarray, np.ndarray]:
    """(visual, text) similarities [N, C]: mean cosine to the class's visual prototypes; cosine to its text."""
    e = unit_rows(emb)
    sims = np.einsum("nd,ckd->nck", e, bank.visual)  # zero rows contribute 0 and are not counted
    visual = sims.sum(-1) / np.maximum(bank.counts, 1)[None, :]
    return visual.astype(np.float32), (e @ bank.text.T).astype(np.float32)


def cooccurrence(labels: np.ndarray, known: np.ndarray) -> np.ndarray:
    """P[i, j] = P(i present | j present), counted over images where both i and j are known. [C, C]"""
    pos = (known & (labels > 0)).astype(np.float64)
    both_known = known.astype(np.float64)
    joint = pos.T @ pos  # [i, j]: i and j both known present
    given = both_known.T @ pos  # [i, j]: i known, j known present
    p = np.divide(joint, given, out=np.zeros_like(joint), where=given > 0)
    np.fill_diagonal(p, 0.0)
    return p


def cooccurrence_scores(p: np.ndarray, labels: np.ndarray, known: np.ndarray) -> np.ndarray:
    """S[n, i] = Σ_{j ≠ i} P(i | j) over image n's known positives j (HST eq. 4). [N, C]"""
    return ((known & (labels > 0)).astype(np.float64) @ p.T).astype(np.float32)


def ema_thresholds(s: np.ndarray, known: np.ndarray, labels: np.ndarray, momentum: float, batch_size: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(θ⁺, θ⁻) [C]: EMAs over seeded minibatches of rows of the mean s of known positives / negatives.
    NaN for a class with no known positives (θ⁺) or negatives (θ⁻): it is then never raised / lowered."""
    n, n_cls = s.shape
    order = np.random.default_rng(seed).permutation(n)
    theta = np.full((2, n_cls), np.nan)
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        for t, is_pos in enumerate((True, False)):
            sel = known[rows] & ((labels[rows] > 0) == is_pos)
            cnt = sel.sum(0)
            mean = np.where(sel, s[rows], 0.0).sum(0) / np.maximum(cnt, 1)
            has = cnt > 0
            first = has & np.isnan(theta[t])
            theta[t] = np.where(first, mean, theta[t])
            upd = has & ~first
            theta[t] = np.where(upd, momentum * theta[t] + (1 - momentum) * mean, theta[t])
    return theta[0], theta[1]


def dtl_step(theta: np.ndarray, s: np.ndarray, known: np.ndarray, labels: np.ndarray, temperature: float,
             lr: float) -> np.ndarray:
    """One gradient step on θ [C] of the per-class partial BCE of σ((s − θ)/τ) against the known labels."""
    prob = sigmoid((s - theta[None, :]) / temperature)
    y = (labels > 0).astype(np.float64)
    cnt = known.sum(0)
    grad = np.where(known, (prob - y) * (-1.0 / temperature), 0.0).sum(0) / np.maximum(cnt, 1)
    return theta - lr * grad


def dtl_thresholds(s: np.ndarray, known: np.ndarray, labels: np.ndarray, temperature: float, lr: float,
                   steps: int) -> np.ndarray:
    """θ [C] learnt by `steps` of dtl_step from the mean known similarity; NaN where a class has no known
    positive (nothing to calibrate against)."""
    cnt = known.sum(0)
    theta = np.where(known, s, 0.0).sum(0) / np.maximum(cnt, 1)
    for _ in range(steps):
        theta = dtl_step(theta, s, known, labels, temperature, lr)
    has_pos = (known & (labels > 0)).any(0)
    return np.where(has_pos, theta, np.nan)


@dataclass(frozen=True)
class ThresholdRule(Settings):
    """The threshold keys of sections `prototypes` and `cooccurrence`: how the thresholds are learnt."""

    method: str = setting("ema", choices=THRESHOLDS)  # ema | dtl
    momentum: float = setting(0.9, ge=0.0, le=1.0)  # ema: η
    batch_size: int = setting(64, ge=1)  # ema: rows per minibatch
    temperature: float = setting(0.05, ge=1e-6)  # dtl: τ
    lr: float = setting(0.005, ge=0.0)  # dtl
    steps: int = setting(300, ge=0)  # dtl
    seed: int = setting(0)

    PARAMS_KEYS: ClassVar[dict[str, str]] = {"method": "threshold"}


def decide(s: np.ndarray, known: np.ndarray, labels: np.ndarray, rule: ThresholdRule,
           lower: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(raise, lower) bool [N, C] for the unknown entries of s, thresholds learnt on the known ones."""
    if rule.method not in THRESHOLDS:
        raise ValueError(f"threshold method must be one of {THRESHOLDS}, got {rule.method!r}")
    if rule.method == "ema":
        pos, neg = ema_thresholds(s, known, labels, rule.momentum, rule.batch_size, rule.seed)
    else:
        pos = dtl_thresholds(s, known, labels, rule.temperature, rule.lr, rule.steps)
        neg = np.full_like(pos, np.nan)
    with np.errstate(invalid="ignore"):
        up = ~known & (s >= pos[None, :])
        down = ~known & (s <= neg[None, :]) if lower else np.zeros_like(up)
    return up, down & ~up


def transfer_by_prototypes(emb: np.ndarray, text: np.ndarray, pseudo: np.ndarray, known: np.ndarray,
                           labels: np.ndarray, rule: ThresholdRule, k: int, bank: int,
                           candidates: np.ndarray | None = None
                           ) -> tuple[np.ndarray, np.ndarray, PrototypeBank, dict]:
    """(raise, lower, bank, thresholds): both modalities must agree (TRM-ML eq. 12). `candidates`: the rows
    that may top up the bank (build_prototypes)."""
    protos = build_prototypes(emb, text, pseudo, known, labels, k, bank, seed=rule.seed, candidates=candidates)
    visual, textual = prototype_similarity(emb, protos)
    up_v, down_v = decide(visual, known, labels, rule, lower=rule.method == "ema")
    up_t, down_t = decide(textual, known, labels, rule, lower=rule.method == "ema")
    return up_v & up_t, down_v & down_t, protos, {"similarity_visual": visual, "similarity_text": textual}


def transfer_by_cooccurrence(known: np.ndarray, labels: np.ndarray, rule: ThresholdRule
                             ) -> tuple[np.ndarray, np.ndarray]:
    """(raise, P): unknown entries raised by their co-occurrence with the image's known positives. One
    threshold for all classes (HST's θ_intra), learnt on known entries of images with another known
    positive."""
    p = cooccurrence(labels, known)
    s = cooccurrence_scores(p, labels, known)
    has_evidence = ((known & (labels > 0)).sum(1, keepdims=True) - (known & (labels > 0))) > 0
    flat_known = (known & has_evidence).reshape(-1, 1)
    up, _ = decide(s.reshape(-1, 1), flat_known, labels.reshape(-1, 1), rule, lower=False)
    up = up.reshape(s.shape) & ~known & (s > 0)
    return up, p


@dataclass(frozen=True)
class LabelTransfer:
    """What a transfer of the `correct` stage (a `correct`-role method) decides for the unknown entries."""

    raised: np.ndarray  # bool [N, C]: unknown entries labelled present
    lowered: np.ndarray  # bool [N, C]: unknown entries labelled absent
    store: dict  # what it keeps in data/prototypes.zarr (prototypes, similarities, P(i | j))


@dataclass(frozen=True)
class CorrectTransfer(Settings):
    """Base of the methods of the `correct` step (pipeline.prototypes, pipeline.cooccurrence): their shared keys
    (the threshold rule's, read from the same section, `raise_logit` and the held-out gate) and the hook
    `correct` calls."""

    rule: ThresholdRule = ThresholdRule()
    raise_logit: float = setting(2.0, ge=0.0)  # a raised entry becomes at least this logit, a lowered at most −it
    gate: str = setting("held_out", choices=GATES)  # held_out: a class keeps its moves where they help (held_out_gate)
    gate_folds: int = setting(5, ge=2)  # held_out: folds of the known entries

    ROLE: ClassVar[str] = "correct"

    def apply(self, target: np.ndarray, known: np.ndarray, labels: np.ndarray,
              embeddings: Callable[[], tuple[np.ndarray, np.ndarray]], train: np.ndarray | None) -> LabelTransfer:
        """What the method decides for the unknown entries. target [N, C]: the corrected logits; known, labels
        [N, C]; `embeddings()`: the (image, text) embeddings, read only if needed; `train` (bool [N], or None for
        all rows): the rows whose statistics may shape the decision."""
        raise NotImplementedError

    def transfer(self, target: np.ndarray, known: np.ndarray, labels: np.ndarray,
                 embeddings: Callable[[], tuple[np.ndarray, np.ndarray]], train: np.ndarray | None) -> LabelTransfer:
        """`apply`, then with `gate: held_out` kept only in the classes where it helps its held-out known
        entries; the gate ([C] int8, 1 = kept) joins the store as `<section>_gate`."""
        moved = self.apply(target, known, labels, embeddings, train)
        if self.gate == "none":
            return moved
        up, down = held_out_moves(lambda visible: self.apply(target, visible, labels, embeddings, train), known,
                                  self.gate_folds, self.rule.seed)
        keep = held_out_gate(target, up, down, known, labels, self.raise_logit)
        return LabelTransfer(moved.raised & keep, moved.lowered & keep,
                             {**moved.store, f"{self.SECTION}_gate": keep.astype(np.int8)})


def held_out_moves(decide: Callable[[np.ndarray], LabelTransfer], known: np.ndarray, folds: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(raised, lowered) bool [N, C] on the known entries, cross-fitted: the known entries are split into
    `folds` seeded folds, and each fold's entries are decided by `decide(visible)` with that fold hidden from
    `visible` (so they are unknown to it, as the entries the method really moves are)."""
    fold = np.random.default_rng(seed).integers(folds, size=known.shape)
    up, down = np.zeros(known.shape, bool), np.zeros(known.shape, bool)
    for f in range(folds):
        hidden = known & (fold == f)
        moved = decide(known & ~hidden)
        up |= moved.raised & hidden
        down |= moved.lowered & hidden
    return up, down


def held_out_gate(target: np.ndarray, up: np.ndarray, down: np.ndarray, known: np.ndarray, labels: np.ndarray,
                  logit: float) -> np.ndarray:
    """bool [C]: the classes whose held-out moves (held_out_moves) raise the AP of their known entries' labels
    (`target`, the corrected logits before any known label is written) strictly. A class where they change
    nothing, or that has no known positive, is not kept: the gate keeps only moves measured to help.

    Why: with CLIP's pseudo labels under them (`unknown: pseudo`) a transfer replaces labels that already rank
    most entries well, and a class's moves help only where they are right more often than those labels; the
    known entries, drawn at random, are a sample of the unknown ones with the truth attached (not so for
    `known: uncertain` or a person's answers, which are chosen)."""
    moved = apply_transfer(target, up, down, logit)
    keep = np.zeros(target.shape[1], bool)
    for c in range(target.shape[1]):
        rows = known[:, c]
        y = labels[rows, c] > 0
        if y.any() and (up[rows, c] | down[rows, c]).any():
            keep[c] = average_precision(y, moved[rows, c]) > average_precision(y, target[rows, c])
    return keep


def apply_transfer(target: np.ndarray, up: np.ndarray, down: np.ndarray, logit: float) -> np.ndarray:
    """Raised entries → at least `logit`, lowered → at most −`logit`; everything else unchanged."""
    out = np.where(up, np.maximum(target, logit), target)
    return np.where(down, np.minimum(out, -logit), out).astype(np.float32)
