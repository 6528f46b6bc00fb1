"""TRM-ML: text-region matching (paper 001, Ma et al., MM '24; docs/references.md#trm-ml), online in `sew`'s
adapter training, on the known labels of the partial-label setting (ratio > 0).

The paper prompt-tunes CLIP's text encoder so that its class embeddings act as classifiers (§3.1) and
matches them with visual representations in CLIP's joint space. Here the text representation g_c is a
learnt vector initialised with CLIP's text embedding of class c, and the visual representation f is the
frozen tower's grid cells mapped into the joint space by the tower's own projection: both live in the
adapter's region head (pipeline.adapter, `prediction: region`). No official code is public (the authors'
repository holds a README only), so where the paper leaves a choice open we say what we took.
- Category-aware regions (§3.2, eq. 2–4) and the text-region matching score (eq. 1, 5) are the adapter's
  region head: class c's energies over the cells are its decoder query's cross-attention, its region
  feature f_c^r the energy-weighted sum of the joint-space cells, its region-level prediction p^r the
  scaled cosine of f_c^r and g_c. The query-level prediction p^q is the adapter's per-query head.
- Inference (§3.6): "the text-region matching score as the final prediction score". In the papers' settings
  (`unknown: ignore` / `negative`) the adapter TRM-ML trains predicts with p^r: the E-step's predictions, the
  refined labels and the exported student. With `unknown: pseudo` (ours, not the paper's) it predicts with
  the per-query head p^q by default (`prediction: auto`; `region` or `query` forces one): p^r is a weaker
  classifier of our toy tower's joint space (the README's joint-space measurement), and on contexts world 2
  (the tuning world, one draw) the student reached 0.858 with p^q against 0.812 with p^r. It does not remove
  TRM-ML's harm there: on world 0 the student falls 0.04 below the known-label baseline with either head.
- Ours where the paper's query level differs: p^q is the adapter's per-query linear head over its own
  128-wide decoder, where eq. 5 matches f^q with g_c by cosine, so the distillation of eq. 6 runs between
  two different kinds of head.
- Classification (§3.6): the M-step's loss on p^q plus `region_weight` (α) times the same loss on p^r. The
  paper's asymmetric loss (eq. 14, γ⁺ 1, γ⁻ 2, m 0.05) on p^r measured worse on the contexts benchmark
  (student 0.753 ± 0.020 over seeds 0–2, against 0.812 ± 0.015 with the M-step's BCE).
- Knowledge distillation (§3.3, eq. 6): KL(σ(p^r) ‖ σ(p^q)) per entry, p^r the (detached) teacher.
- Visual prototypes (§3.4, eq. 7): per class a first-in-first-out bank of `bank` cell features; every
  image where c is a known positive pushes its `top_k` highest-energy joint-space cells of region c.
- Pseudo labels (eq. 8–12): an entry's visual similarity is the mean cosine of its region feature to its
  class's bank, its text similarity the cosine to g_c. Per class and modality, θ⁺ and θ⁻ are exponential
  moving averages (η = `momentum`, eq. 11) of the batch's mean similarity of known positives and known
  negatives (eq. 9). Eq. 10 is garbled; as in pipeline.transfer we read it as: present when s ≥ θ⁺,
  absent when s ≤ θ⁻. Both modalities must agree (eq. 12). From `start_epoch` the entries so labelled are
  positives / negatives of the M-step; after training they are raised / lowered in the refined Z.
- Multimodal contrastive learning (§3.5, eq. 13): InfoNCE with each class's g_c as anchor, the region
  features of its known positives in the batch and its bank's cells as positives, those of the other
  classes as negatives, temperature `nce_temperature`.
- Loss (eq. 15): L_cls + β·L_KD + γ·L_NCE (β = `kd_weight`, γ = `nce_weight`), with the paper's defaults (§4.1:
  α = 1, β = 0.05, γ = 0.01; its decoder has one attention head, `sew.adapter.heads: 1`). Its decoder is not
  ours (TailorCLIP's adapter): in ours one head costs partial BCE itself 0.11 on contexts world 2 (the tuning
  world), so the Table-1 row `trm_paper_heads4` runs TRM-ML on our four heads beside `trm_paper` on one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from pipeline.adapter import Adapter, region_features
from pipeline.method_registry import register_method
from pipeline.online_transfer import AdapterPass, OnlineTransfer, TransferStep
from pipeline.settings import Settings, setting

PREDICTION_CHOICES = ("auto", "region", "query")


@register_method
@dataclass(frozen=True)
class TrmSettings(Settings):
    """Method `trm`, section `trm`: TRM-ML's text-region matching and multimodal prototypes (paper 001), trained
    with the adapter in `sew`."""

    start_epoch: int = setting(4, ge=0)  # pseudo labels from this epoch (the banks fill before)
    bank: int = setting(64, ge=1)  # ℓ: cell features per class queue
    top_k: int = setting(4, ge=1)  # k: cells a known positive pushes per image (eq. 7)
    momentum: float = setting(0.9, ge=0.0, le=1.0)  # η of the EMA thresholds (eq. 11)
    region_weight: float = setting(1.0, ge=0.0)  # α (§4.1): classification loss on the region-level predictions
    kd_weight: float = setting(0.05, ge=0.0)  # β (§4.1)
    nce_weight: float = setting(0.01, ge=0.0)  # γ (§4.1)
    nce_temperature: float = setting(0.07, gt=0.0)
    raise_logit: float = setting(4.0, ge=0.0)  # labelled entries' targets: at least σ(this) / at most σ(−this)
    # the head the adapter predicts with: region (its §3.6), query, or auto: region in the papers' settings,
    # query with `unknown: pseudo`
    prediction: str = setting("auto", choices=PREDICTION_CHOICES)

    SECTION: ClassVar[str] = "trm"
    NAME: ClassVar[str] = "trm"
    ROLE: ClassVar[str] = "online"
    REGION_HEAD: ClassVar[bool] = True

    def prediction_head(self, paper_setting: bool) -> str:
        """`prediction` resolved: `auto` is the paper's region head where no CLIP label trains (`unknown`
        ignore / negative), the per-query head with `unknown: pseudo`."""
        if self.prediction != "auto":
            return self.prediction
        return "region" if paper_setting else "query"

    def transfer(self, adapter: Adapter) -> Trm:
        return Trm(self, adapter)


def bernoulli_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(σ(t) ‖ σ(s)) over entries: eq. 6 for independent labels."""
    p = torch.sigmoid(teacher_logits)
    return (p * (F.logsigmoid(teacher_logits) - F.logsigmoid(student_logits))
            + (1 - p) * (F.logsigmoid(-teacher_logits) - F.logsigmoid(-student_logits))).mean()


def info_nce(anchors: torch.Tensor, anchor_class: torch.Tensor, keys: torch.Tensor, key_class: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """Eq. 13: for each anchor, the mean over keys of its class of −log(e^{a·k⁺/τ} / (e^{a·k⁺/τ} + Σ e^{a·k⁻/τ})),
    the negatives being the keys of other classes; averaged over anchors that have positives. Unit vectors."""
    sim = anchors @ keys.T / temperature  # [A, K]
    same = anchor_class[:, None] == key_class[None, :]
    has = same.any(1) & (~same).any(1)
    if not bool(has.any()):
        return anchors.sum() * 0.0
    neg = torch.logsumexp(sim.masked_fill(same, float("-inf")), dim=1, keepdim=True)
    per = torch.logaddexp(sim, neg) - sim
    per = (per * same).sum(1) / same.sum(1).clamp(min=1)
    return per[has].mean()


def ema_update(theta: torch.Tensor, scores: torch.Tensor, select: torch.Tensor, momentum: float) -> torch.Tensor:
    """θ [C] ← η θ + (1 − η) · batch mean of scores where select (eq. 11); a first value initialises θ (NaN)."""
    count = select.sum(0)
    mean = torch.where(select, scores, torch.zeros_like(scores)).sum(0) / count.clamp(min=1)
    has = count > 0
    updated = torch.where(torch.isnan(theta), mean, momentum * theta + (1 - momentum) * mean)
    return torch.where(has, updated, theta)


class Trm(OnlineTransfer):
    """TRM-ML for one training run (pipeline.online_transfer)."""

    def __init__(self, settings: TrmSettings, adapter: Adapter):
        super().__init__()
        if adapter.cfg.embed == 0:
            raise ValueError("TRM-ML trains an adapter with a region head (AdapterConfig.embed > 0)")
        self.settings = settings
        self.raise_logit = settings.raise_logit
        self.adapter = [adapter]  # read, not owned: its parameters stay in the adapter's group and checkpoint
        n_classes, embed = adapter.text.shape
        self.register_buffer("bank", torch.zeros(n_classes, settings.bank, embed))
        self.register_buffer("filled", torch.zeros(n_classes, dtype=torch.long))
        self.register_buffer("cursor", torch.zeros(n_classes, dtype=torch.long))
        self.register_buffer("theta", torch.full((2, 2, n_classes), float("nan")))  # [visual|text, pos|neg, C]
        self.register_buffer("labelling", torch.tensor(False))  # whether training reached start_epoch

    @torch.no_grad()
    def push(self, cells: torch.Tensor, energies: torch.Tensor, known_sign: torch.Tensor) -> None:
        """Each known positive (b, c) pushes its top_k highest-energy cells [B, T, E] into class c's queue (eq. 7)."""
        k = min(self.settings.top_k, cells.shape[1])
        top = energies.topk(k, dim=-1).indices  # [B, C, k]
        size = self.bank.shape[1]
        for b, c in (known_sign > 0).nonzero().tolist():
            picked = cells[b, top[b, c]]
            slots = (self.cursor[c] + torch.arange(k)) % size
            self.bank[c, slots] = picked
            self.cursor[c] = (self.cursor[c] + k) % size
            self.filled[c] = min(size, int(self.filled[c]) + k)

    def filled_slots(self) -> torch.Tensor:
        """bool [C, ℓ]: the bank's slots that hold a cell."""
        return torch.arange(self.bank.shape[1])[None, :] < self.filled[:, None]

    @torch.no_grad()  # they set thresholds and pick labels; no loss reads them
    def similarities(self, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(visual, text) [B, C]: mean cosine to the class's bank (eq. 8–9); cosine to g_c."""
        unit = F.normalize(region.detach(), dim=-1)
        cos = torch.einsum("bch,clh->bcl", unit, F.normalize(self.bank, dim=-1))
        visual = (cos * self.filled_slots()).sum(-1) / self.filled.clamp(min=1)
        text = self.adapter[0].region_cosines(unit)
        return visual, text

    def decide(self, sims: tuple[torch.Tensor, torch.Tensor], known_sign: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unknown entries both modalities call present (s ≥ θ⁺) / absent (s ≤ θ⁻) (eq. 10, 12)."""
        unknown = known_sign == 0
        up, down = unknown & (self.filled > 0), unknown & (self.filled > 0)
        for m, s in enumerate(sims):
            pos, neg = self.theta[m, 0], self.theta[m, 1]
            up = up & ~torch.isnan(pos) & (s >= pos)
            down = down & ~torch.isnan(neg) & (s <= neg)
        return up, down & ~up

    def step(self, out: AdapterPass, known_sign: torch.Tensor, targets: torch.Tensor, labelled: torch.Tensor,
             epoch: int) -> TransferStep:
        s = self.settings
        energies = out.attention
        region = region_features(out.joint, energies)
        p_r = self.adapter[0].region_head(region)
        cls = F.binary_cross_entropy_with_logits(p_r, targets, reduction="none")
        w = labelled.float()
        loss = s.region_weight * (cls * w).sum() / w.sum().clamp(min=1)
        loss = loss + s.kd_weight * bernoulli_kl(p_r.detach(), out.logits)
        loss = loss + s.nce_weight * self.contrastive(region, known_sign)
        sims = self.similarities(region)
        with torch.no_grad():  # thresholds from this batch's known entries (eq. 9, 11), then the bank
            for m, sim in enumerate(sims):
                for t, select in enumerate((known_sign > 0, known_sign < 0)):
                    self.theta[m, t] = ema_update(self.theta[m, t], sim, select & (self.filled > 0), s.momentum)
        none = torch.zeros_like(known_sign, dtype=torch.bool)
        self.labelling |= epoch >= s.start_epoch
        moved = self.decide(sims, known_sign) if epoch >= s.start_epoch else (none, none)
        self.push(out.joint.detach(), energies.detach(), known_sign)
        return TransferStep(loss, *moved)

    def contrastive(self, region: torch.Tensor, known_sign: torch.Tensor) -> torch.Tensor:
        """Eq. 13 with the text representations as anchors, the batch's known positives' region features and
        the banks' cells as keys."""
        b, c = (known_sign > 0).nonzero(as_tuple=True)
        keys = [F.normalize(region[b, c], dim=-1)]
        key_class = [c]
        slots = self.filled_slots()
        if bool(slots.any()):
            keys.append(F.normalize(self.bank[slots], dim=-1))
            key_class.append(torch.arange(self.bank.shape[0])[:, None].expand_as(slots)[slots])
        anchors = F.normalize(self.adapter[0].text, dim=-1)
        return info_nce(anchors, torch.arange(anchors.shape[0]), torch.cat(keys), torch.cat(key_class),
                        self.settings.nce_temperature)

    @torch.no_grad()
    def final(self, out: AdapterPass, known_sign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the last thresholds label on the plain images; nothing if training never reached start_epoch."""
        if not bool(self.labelling):
            none = torch.zeros_like(known_sign, dtype=torch.bool)
            return none, none
        region = region_features(out.joint, out.attention)
        return self.decide(self.similarities(region), known_sign)
