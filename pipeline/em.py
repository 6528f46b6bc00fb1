"""The EM of the sew stage (TailorCLIP §3.5, Algorithm 1): the adapter's M-steps on the composites of
pipeline.sew and the E-steps that refine the pseudo labels Z, with the training rules (pipeline.rules) and the
known-label transfers (pipeline.online_transfer: HST, TRM-ML) plugged into the loop. The settings are
pipeline.sew.SewSettings (`e_step`, `e_weight`, `e_rounds`, `em_epochs`, `refined_from`: that module's docstring
says what each changes from the paper).

Kept apart from the composites so that the stages that only encode images (`features`) never depend on a
training rule or a transfer: a method edit reruns `sew`, never the frozen tower's features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pipeline import clip
from pipeline.logits import logit
from pipeline.online_transfer import (
    OnlineTransfer,
    adapter_pass,
    apply_targets,
    composite_known_sign,
    known_sign_of,
)
from pipeline.resume import Checkpointer
from pipeline.rules import (
    EPS,
    NO_RULE,
    Rule,
    curriculum_mask,
    training_loss,
    unknown_targets,
    update_pseudo_labels,
)
from pipeline.sew import SewDataset, SewSettings, max_over_sources, source_mask


def encode_batch(visual: torch.nn.Module | None, normalizer: tuple[torch.Tensor, torch.Tensor] | None,
                 dataset: SewDataset, batch: torch.Tensor) -> torch.Tensor:
    """The adapter's input for a batch of the dataset: tower features of images, or the features themselves."""
    if dataset.encoded:
        return batch
    mean, std = normalizer
    return clip.grid_features(visual, clip.normalize_u8(batch, mean, std))


def map_hosts(fn: Callable[[torch.Tensor, slice], torch.Tensor], visual: torch.nn.Module | None,
              normalizer: tuple[torch.Tensor, torch.Tensor] | None, adapter: torch.nn.Module, dataset: SewDataset,
              batch_size: int) -> torch.Tensor:
    """fn(the adapter's input for a batch of training images as they are, without overlays; their rows),
    batch after batch with the adapter in eval mode and no gradients, concatenated along the first axis."""
    adapter.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            rows = slice(start, min(start + batch_size, len(dataset)))
            images = torch.stack([dataset.load(i) for i in range(rows.start, rows.stop)])
            out.append(fn(encode_batch(visual, normalizer, dataset, images), rows))
    return torch.cat(out)


def predict_hosts(visual: torch.nn.Module, normalizer: tuple[torch.Tensor, torch.Tensor], adapter: torch.nn.Module,
                  dataset: SewDataset, batch_size: int) -> np.ndarray:
    """The adapter's logits on every training image as it is, without overlays. [N, C]"""
    return map_hosts(lambda f, _: adapter(f), visual, normalizer, adapter, dataset, batch_size).numpy()


def e_step(z_init: np.ndarray, predictions: np.ndarray, weight: float) -> np.ndarray:
    """The closed-form E-step on logits: Z ← (1 − w)·Z_init + w·P, P the adapter's logits on the plain images.

    Anchored to the initial estimate rather than compounding epoch after epoch, so that the adapter's own
    errors do not feed back into its targets until Z is the adapter's.
    """
    return ((1.0 - weight) * np.asarray(z_init, np.float64) + weight * np.asarray(predictions, np.float64)).astype(
        np.float32)


@dataclass
class EmState:
    """What the EM carries from epoch to epoch, and a checkpoint saves.

    `z0` [N, C]: the initial logits (known entries keep them; in the papers' settings the unknown ones are 0);
    `keep`: the known entries; `z`: the estimator Z; `pseudo`: the unknown entries trained on their pseudo
    label; `started`: whether a rule's ŷ exists (plmcl, g2netpl); `y_prev`: the rule's ŷ(t − 1); `y_hat`: the
    rule's ŷ(t) where it feeds the E-step (`unknown: pseudo`; Z holds it where the rule replaces the E-step);
    `known_weight` [N, C]: each entry's BCE weight by whether it is known (`sew.known_weight`), or None where
    all weigh alike (the papers' settings, nothing known, or everything).
    """

    z0: torch.Tensor
    keep: torch.Tensor
    z: torch.nn.Parameter
    pseudo: torch.Tensor
    started: bool
    y_prev: np.ndarray
    y_hat: np.ndarray
    known_weight: torch.Tensor | None = None

    @classmethod
    def initial(cls, z_init: np.ndarray, frozen: np.ndarray, paper: bool, known_weight: float = 1.0) -> EmState:
        keep = torch.tensor(np.asarray(frozen), dtype=torch.bool)
        z0 = torch.tensor(np.asarray(z_init), dtype=torch.float32)
        if paper:  # the papers' settings: no CLIP label anywhere, the unknown entries start at ½
            z0 = torch.where(keep, z0, torch.zeros_like(z0))
        # the unknown entries trained on their pseudo labels: every one with `unknown: pseudo` (the corrected
        # CLIP labels are ŷ(0)); in the papers' settings none until a rule's labels start from the network's outputs
        pseudo = ~keep if not paper else torch.zeros_like(keep)
        y0 = torch.sigmoid(z0).numpy().astype(np.float64)
        weighs = not paper and known_weight != 1.0 and bool(keep.any()) and not bool(keep.all())
        weight = torch.where(keep, known_weight, 1.0).float() if weighs else None
        return cls(z0, keep, torch.nn.Parameter(z0.clone()), pseudo, not paper, y0, y0.copy(), weight)

    def refined(self) -> np.ndarray:
        """Z with the known entries as given. [N, C]"""
        return torch.where(self.keep, self.z0, self.z.detach()).numpy().astype(np.float32)


def em_optimizer(adapter: torch.nn.Module, z: torch.nn.Parameter, settings: SewSettings,
                 transfer: OnlineTransfer | None) -> tuple[torch.optim.Optimizer, list[int]]:
    """AdamW over the adapter, Z (the estimator's lr) and the transfer's parameters; and the groups whose lr
    follows the adapter's schedule (the transfer's thresholds learn at their own rate)."""
    groups = [{"params": adapter.parameters(), "lr": settings.lr, "weight_decay": settings.weight_decay},
              {"params": [z], "lr": settings.estimator_lr, "weight_decay": 0.0}]
    scheduled = [0]
    if transfer is not None:
        own, thresholds = transfer.optimizer_groups(settings.lr, settings.weight_decay)
        scheduled.append(len(groups))
        groups += [own] + ([thresholds] if thresholds else [])
    return torch.optim.AdamW(groups, foreach=True), scheduled


def restore_em(checkpointer: Checkpointer | None, state: EmState, adapter: torch.nn.Module,
               opt: torch.optim.Optimizer, transfer: OnlineTransfer | None) -> int:
    """Load the last checkpoint of this run into `state`, the adapter, the optimizer and the transfer; the
    epoch to start from (0 without one)."""
    saved = checkpointer.restore() if checkpointer is not None else None
    if saved is None:
        return 0
    adapter.load_state_dict(saved["adapter"])
    opt.load_state_dict(saved["optimizer"])
    with torch.no_grad():
        state.z.copy_(saved["z"])
    state.y_prev = saved["y_prev"].numpy()
    state.y_hat = saved["y_hat"].numpy() if "y_hat" in saved else state.y_hat
    state.pseudo, state.started = saved.get("pseudo", state.pseudo), saved.get("started", state.started)
    torch.set_rng_state(saved["torch_rng"])
    if transfer is not None:
        transfer.load_state_dict(saved["transfer"])
    return saved["position"]


def save_em(checkpointer: Checkpointer, epoch: int, state: EmState, adapter: torch.nn.Module,
            opt: torch.optim.Optimizer, transfer: OnlineTransfer | None) -> None:
    checkpointer.save({"position": epoch + 1, "adapter": adapter.state_dict(), "optimizer": opt.state_dict(),
                       "z": state.z.detach().clone(), "y_prev": torch.from_numpy(state.y_prev),
                       "y_hat": torch.from_numpy(state.y_hat),
                       "torch_rng": torch.get_rng_state(), "pseudo": state.pseudo.clone(), "started": state.started,
                       **({} if transfer is None else {"transfer": transfer.state_dict()})})


def composite_targets(state: EmState, sources: torch.Tensor, classes: torch.Tensor, hidden: torch.Tensor | None,
                      w_all: torch.Tensor | None, rule: Rule
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """A batch's labels from Z (eq. 13, 18): (zs, the logits of the composite labels with 0 where no
    source labels an entry; targets σ(zs); labelled, the entries with a target; the entries' loss weights
    or None; their BCE weights by whether they are known, the most weighted source that labels each, or
    None). In the papers' settings the host's unknown entries without a pseudo label carry none
    (`ignore`) or are negatives (`negative`), and PLMCL's or G2NetPL's λ weighs the pseudo-labelled ones."""
    keep, z0, z = state.keep, state.z0, state.z
    rows = sources.clamp(min=0)  # gather the batch's rows first: never touch all N × C per step
    zs = max_over_sources(torch.where(keep[rows], z0[rows], z[rows]), sources, classes, hidden)
    labelled = torch.isfinite(zs)
    zs = torch.where(labelled, zs, torch.zeros_like(zs))
    w = None if w_all is None else max_over_sources(w_all[rows], sources, classes, hidden).clamp(min=0)
    wk = (None if state.known_weight is None
          else max_over_sources(state.known_weight[rows], sources, classes, hidden).clamp(min=0))
    targets = torch.sigmoid(zs).detach()
    if rule.paper_setting:  # plain images only (fit_adapter): the host's row is the whole label
        host_known, host_pseudo = keep[sources[:, 0]], state.pseudo[sources[:, 0]]
        targets, labelled = unknown_targets(targets, labelled, host_known, host_pseudo, rule.unknown)
        if rule.pseudo_weight != 1.0:
            lam = torch.where(host_pseudo & ~host_known, rule.pseudo_weight, 1.0)
            w = lam if w is None else w * lam
    return zs, targets, labelled, w, wk


def rule_label_step(state: EmState, predictions: np.ndarray, rule: Rule, epoch: int,
                    settings: SewSettings) -> None:
    """The epoch-end label step of `plmcl` / `g2netpl` on the network's logits on the plain images: Z follows
    the rule's ŷ. In the papers' settings ŷ(0) is the network's sigmoid outputs after its first epoch
    (000 §III.A), and the curriculum picks the pseudo labels the next epoch trains on."""
    keep = state.keep.numpy()
    y = torch.sigmoid(state.z.detach()).numpy().astype(np.float64)
    probabilities = torch.sigmoid(torch.from_numpy(predictions)).numpy()
    if state.started:
        new = update_pseudo_labels(y, state.y_prev, probabilities, keep, rule)
    else:
        new = np.where(keep, y, np.clip(probabilities, EPS, 1 - EPS))
        y, state.started = new, True
    state.y_prev = y
    with torch.no_grad():
        state.z.copy_(torch.logit(torch.tensor(new, dtype=torch.float32)))
    if rule.paper_setting:
        # the epochs after the first train on pseudo labels: the curriculum reaches every entry by the last
        progress = epoch / max(1, settings.epochs - 2)
        state.pseudo = torch.from_numpy(curriculum_mask(new, keep, progress) if rule.uses_curriculum else ~keep)


def rule_prediction_step(state: EmState, predictions: np.ndarray, rule: Rule) -> None:
    """With `unknown: pseudo` the rule's epoch-end label step (ŷ(0) the corrected CLIP labels) smooths the
    network's predictions on the plain images into ŷ, which the next E-step takes for its prediction; Z, what
    the adapter trains on, stays TailorCLIP's until then."""
    probabilities = torch.sigmoid(torch.from_numpy(predictions)).numpy()
    new = update_pseudo_labels(state.y_hat, state.y_prev, probabilities, state.keep.numpy(), rule)
    state.y_prev, state.y_hat = state.y_hat, new


@dataclass(frozen=True)
class EmPlan:
    """Which label steps a run of `train_adapter_em` takes, from the sew settings and the rule.

    `paper`: the papers' settings (no CLIP label, no E-step); `predictions_e_step`: the E-step mixes the
    adapter's predictions into Z at `settings.e_step_epochs`; `feeds_e_step`: a rule's ŷ is that prediction
    (`unknown: pseudo`); `replaces_e_step`: the rule's ŷ is Z itself; `backprop`: eq. 19's E-step, Z learning
    by gradient beside the adapter; `final_e_step`: the refined labels come from one more predictions E-step
    with the final adapter (`sew.refined_from: final`), unless the last E-step already mixed in that adapter's
    own predictions (after the last epoch, with no rule's ŷ in their place): it would recompute the same Z."""

    paper: bool
    predictions_e_step: bool
    feeds_e_step: bool
    replaces_e_step: bool
    backprop: bool
    final_e_step: bool

    @classmethod
    def of(cls, settings: SewSettings, rule: Rule) -> EmPlan:
        paper = rule.paper_setting
        predictions = settings.e_step == "predictions" and settings.e_weight > 0 and not paper
        feeds = rule.UPDATES_LABELS and predictions
        return cls(paper, predictions, feeds, rule.UPDATES_LABELS and not feeds,
                   settings.e_step == "backprop" and not rule.UPDATES_LABELS and not paper,
                   predictions and settings.refined_from == "final"
                   and (feeds or settings.em_span < settings.epochs))


@dataclass(frozen=True)
class EmRun:
    """One EM run's fixed parts, which every step reads: the frozen tower (None on stored features) and its
    normalizer, the adapter, its composites, the rule, the transfer and its known signs, the rule's entry
    weights [N, C], the settings and the plan."""

    visual: torch.nn.Module | None
    normalizer: tuple[torch.Tensor, torch.Tensor] | None
    adapter: torch.nn.Module
    dataset: SewDataset
    settings: SewSettings
    rule: Rule
    plan: EmPlan
    transfer: OnlineTransfer | None
    host_sign: torch.Tensor | None
    w_all: torch.Tensor | None

    def plain_predictions(self) -> np.ndarray:
        """The adapter's logits on the images without overlays. [N, C]"""
        return predict_hosts(self.visual, self.normalizer, self.adapter, self.dataset, self.settings.batch_size)

    def loader(self, epoch: int, num_workers: int) -> DataLoader:
        """The epoch's composites in a seeded order."""
        order = torch.Generator().manual_seed(self.settings.seed * 1000 + epoch)
        return DataLoader(self.dataset, batch_size=self.settings.batch_size, shuffle=True, generator=order,
                          num_workers=num_workers, drop_last=len(self.dataset) > self.settings.batch_size)

    def transfer_epoch_start(self, epoch: int) -> None:
        """The transfer sees the known positives' class features on the plain images."""
        if self.transfer is None:
            return
        sign = self.host_sign
        self.transfer.epoch_start(epoch, lambda: map_hosts(  # only the known positives' rows: never all N × C
            lambda f, batch: self.adapter.class_features(f)[sign[batch] > 0], self.visual, self.normalizer,
            self.adapter, self.dataset, self.settings.batch_size), sign)


def m_step_loss(run: EmRun, state: EmState, batch: tuple, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the batch's loss, its M-step part): the BCE against the composite labels from Z under the rule (eq.
    20), the transfer's losses and the targets it moves, and eq. 19's E-step loss under `backprop`."""
    images, sources, classes, hidden = batch
    with torch.no_grad():
        feats = encode_batch(run.visual, run.normalizer, run.dataset, images)
    out = adapter_pass(run.adapter, feats)
    hidden = hidden if hidden.shape[-1] else None
    zs, targets, labelled, w, wk = composite_targets(state, sources, classes, hidden, run.w_all, run.rule)
    transfer_loss = None
    if run.transfer is not None:
        overlaid = source_mask(sources[:, 1:], classes[:, 1:], zs.shape[-1]).any(1)
        sign = composite_known_sign(run.host_sign[sources[:, 0]], overlaid, hidden)
        moved = run.transfer.step(out, sign, targets, labelled, epoch)
        if run.plan.paper:  # what the transfer labels is a target even where `ignore` gives none
            labelled = labelled | moved.raised | moved.lowered
        targets = apply_targets(targets, moved, labelled, run.transfer.raise_logit)
        transfer_loss = moved.loss
    embeddings = out.class_features.mean(1) if run.rule.REPRESENTATION else None  # only a rule that reads them
    m_loss = training_loss(out.logits, embeddings, targets, state.keep[sources[:, 0]], run.rule, epoch, w,
                           labelled, wk)
    loss = m_loss if transfer_loss is None else m_loss + transfer_loss
    if run.plan.backprop:  # eq. 19: the composite labels learn from the adapter's predictions
        e_loss = F.binary_cross_entropy_with_logits(zs, torch.sigmoid(out.logits).detach(), reduction="none")
        loss = loss + (e_loss * labelled).sum() / labelled.sum().clamp(min=1)
    return loss, m_loss


def label_steps(run: EmRun, state: EmState, epoch: int) -> None:
    """The epoch-end label steps: the rule's ŷ (replacing the E-step, or feeding it), then the predictions
    E-step where this epoch ends one."""
    plan, settings = run.plan, run.settings
    if plan.replaces_e_step:
        rule_label_step(state, run.plain_predictions(), run.rule, epoch, settings)
    if plan.feeds_e_step and epoch + 1 <= settings.em_span:  # ŷ only matters up to the last E-step
        rule_prediction_step(state, run.plain_predictions(), run.rule)
    if plan.predictions_e_step and epoch + 1 in settings.e_step_epochs:
        predictions = logit(state.y_hat, EPS).astype(np.float32) if plan.feeds_e_step else run.plain_predictions()
        with torch.no_grad():  # any later epochs' composites take their labels from the refined Z
            state.z.copy_(torch.from_numpy(e_step(state.z0.numpy(), predictions, settings.e_weight)))


def train_adapter_em(visual: torch.nn.Module, normalizer: tuple[torch.Tensor, torch.Tensor],
                     adapter: torch.nn.Module, dataset: SewDataset, z_init: np.ndarray, frozen: np.ndarray,
                     settings: SewSettings, num_workers: int = 0,
                     on_step: Callable[[int, int, float], None] | None = None,
                     rule: Rule = NO_RULE, weights: np.ndarray | None = None,
                     checkpointer: Checkpointer | None = None, transfer: OnlineTransfer | None = None
                     ) -> np.ndarray:
    """Train `adapter` on composites and the estimator Z jointly (Algorithm 1); returns refined Z.

    M-step (`m_step_loss`): BCE(p, stop σ(z_s)) trains the adapter (eq. 20), with z_s the composite label
    from Z; entries no source labels (hidden host labels) carry no loss. E-step (`label_steps`):
    `settings.e_step` (see the module docstring). Entries where `frozen` is True (known labels) keep z_init.
    The visual tower stays frozen; with estimator_lr 0 (backprop) or e_weight 0 (predictions) this is plain
    distillation of fixed labels. Under `sew.refined_from: final` the returned Z is one more predictions
    E-step, with the adapter that finished training; the training itself is the same.
    A partial-label `rule` (pipeline.rules) weights the M-step; with `unknown: pseudo` a known entry's BCE weighs
    `settings.known_weight` pseudo-labelled ones. `plmcl` and `g2netpl` update their labels ŷ
    after each epoch, on predictions for the images without overlays: in the papers' settings (and with
    `e_step: backprop` or `e_weight: 0`) ŷ replaces the E-step and Z follows it; with `unknown: pseudo` and the
    predictions E-step, ŷ starts from the corrected CLIP labels and the E-step takes it as its prediction
    (`rule_prediction_step`), so the rule smooths what EM refines the labels towards instead of retraining
    the adapter on its own outputs every epoch (which cost the student 0.08 (PLMCL) and 0.19 (G2NetPL) on
    the contexts benchmark).
    `weights` [N, C] (label_distribution's distributions, which its contrastive loss on the mean of the class
    features reads) weight a composite's entries by the max over its sources.
    A `checkpointer` saves the state after each epoch; a rerun resumes from the last one.
    `transfer` (pipeline.online_transfer: HST, TRM-ML; known labels only): its losses join the M-step, the
    entries it raises or lowers are positives or negatives of the M-step, and it sees the plain images at
    the start of every epoch.
    """
    torch.manual_seed(settings.seed)
    plan = EmPlan.of(settings, rule)
    state = EmState.initial(z_init, frozen, plan.paper, settings.known_weight)
    w_all = None if weights is None else torch.tensor(np.asarray(weights), dtype=torch.float32)
    opt, scheduled = em_optimizer(adapter, state.z, settings, transfer)
    host_sign = None if transfer is None else known_sign_of(state.z0, state.keep)
    run = EmRun(visual, normalizer, adapter, dataset, settings, rule, plan, transfer, host_sign, w_all)
    if visual is not None:
        visual.eval()
    start = restore_em(checkpointer, state, adapter, opt, transfer)
    for epoch in range(start, settings.epochs):
        dataset.epoch = epoch
        loader = run.loader(epoch, num_workers)
        run.transfer_epoch_start(epoch)
        adapter.train()
        for step, batch in enumerate(loader):
            lr = settings.adapter_lr(epoch * len(loader) + step, settings.epochs * len(loader))
            for g in scheduled:
                opt.param_groups[g]["lr"] = lr
            loss, m_loss = m_step_loss(run, state, batch, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step(epoch, step, m_loss.item())
        label_steps(run, state, epoch)
        if checkpointer is not None and checkpointer.due(epoch) and epoch + 1 < settings.epochs:
            save_em(checkpointer, epoch, state, adapter, opt, transfer)
    adapter.eval()
    if plan.paper and not rule.UPDATES_LABELS:  # the method's labels of the unknown entries: the trained network's
        with torch.no_grad():
            state.z.copy_(torch.from_numpy(run.plain_predictions()))
    if plan.final_e_step:  # the labels a user takes away: Z⁰ mixed with the final adapter's logits
        with torch.no_grad():
            state.z.copy_(torch.from_numpy(e_step(state.z0.numpy(), run.plain_predictions(), settings.e_weight)))
    return state.refined()
