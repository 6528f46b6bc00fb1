"""Training the adapter on composites of the train split: the one body of the `sew` stage (its labels
are the corrected pseudo labels, refined by EM) and of the `ceiling` stage (the true labels, the same
composites: the "fully supervised" row of every paper table). TailorCLIP §3.3.2–§3.5, Algorithm 1; the
composites are in pipeline.sew, the EM in pipeline.em, the adapter in pipeline.adapter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from pipeline import clip
from pipeline.adapter import Adapter, AdapterOptions, adapter_for, adapter_for_grid
from pipeline.cut import best_view_boxes
from pipeline.em import map_hosts, predict_hosts, train_adapter_em
from pipeline.features import GRID, read_feature_store
from pipeline.logits import sigmoid
from pipeline.models import AdapterSpec
from pipeline.online_transfer import OnlineTransfer, adapter_pass, known_sign_of
from pipeline.progress import progress_bar
from pipeline.resume import Checkpointer, fingerprint
from pipeline.rules import NO_RULE, Rule
from pipeline.sew import FeatureSewDataset, SewDataset, SewSettings, overlay_pool, overlay_pool_pairs
from pipeline.storage import Table, manifest_paths, open_store
from pipeline.transfer import apply_transfer


@dataclass(frozen=True)
class TrainSplit:
    """What adapter training reads about the train images, in manifest order."""

    rows: np.ndarray  # their rows in the manifest
    image_ids: list[str]
    paths: list[str]
    classes: list[str]
    z0: np.ndarray  # [N, C] CLIP's global logits: the overlay pool ranks by them (eq. 10)
    host_boxes: np.ndarray | None  # [N, C, 4] each class's best-scoring view, where overlays avoid
    templates: list[str]  # the prompts the classes were scored with: TRM-ML's region head starts from them


def read_train_split(manifest: str | Path, initial: str | Path, scores: str | Path, with_boxes: bool) -> TrainSplit:
    """The train split of the manifest, its z⁰ from the initial label table, the score store's prompt
    templates and (with_boxes) the box of the best-scoring local view of every class from the store."""
    table = Table(manifest)
    train = table.column("split") == "train"
    boxes = None
    store = open_store(scores, required=("local", "crops", "boxes") if with_boxes else ())
    if with_boxes:
        boxes = best_view_boxes(*(np.asarray(store[name][:], dtype=np.float32)
                                  for name in ("local", "crops", "boxes")))[train]
    return TrainSplit(np.flatnonzero(train), list(table.column("image_id")[train]),
                      list(manifest_paths(table)[train]), list(table.classes), Table(initial).column("z0")[train],
                      boxes, list(store.attrs.get("templates", clip.DEFAULT_TEMPLATES)))


@dataclass(frozen=True)
class AdapterRecipe:
    """How an adapter trains: the `sew` section (composites, EM, the tower's input side), the adapter's
    shape, the partial-label rule (pipeline.rules) and the `online` method that trains with it (pipeline.hst's
    or pipeline.trm's settings, or None)."""

    settings: SewSettings
    options: AdapterOptions
    rule: Rule = NO_RULE
    transfer: Any = None


def tower_inputs(settings: SewSettings, descriptor: dict, split: TrainSplit,
                 features: str | Path) -> tuple[nn.Module | None, dict[str, np.ndarray] | None]:
    """What fit_adapter trains from: (None, the feature store's arrays) with `composites: features`,
    else (the frozen tower's model, None)."""
    if settings.composites == "features":
        return None, read_feature_store(features, split.image_ids, settings.image_size, settings.overlay_side,
                                        settings.max_overlays)
    return clip.load_described(descriptor), None


def needs_host_boxes(settings: SewSettings) -> bool:
    """Overlay placement or hidden host labels read where each class most likely is."""
    return settings.placement_tries > 1 or settings.cover_limit < 1


def transfer_on(settings: Any, frozen: np.ndarray) -> bool:
    """Whether an `online` method trains with the adapter: one is chosen and something is known."""
    return settings is not None and bool(np.asarray(frozen).any())


def adapter_prediction(settings: Any, frozen: np.ndarray, paper_setting: bool = False) -> str:
    """The head the adapter predicts with: the `online` method's where it trains (TRM-ML: text-region matching,
    its §3.6, in the papers' settings), else the per-query head."""
    return settings.prediction_head(paper_setting) if transfer_on(settings, frozen) else "query"


def needs_region_head(settings: Any, frozen: np.ndarray) -> bool:
    """Whether the adapter carries TRM-ML's region head (the `online` method trains it), whichever head predicts."""
    return transfer_on(settings, frozen) and settings.REGION_HEAD


def region_head_start(model: nn.Module, descriptor: dict, classes: list[str], templates: list[str]) -> tuple:
    """What TRM-ML's region head starts from (Adapter.set_joint_space): the tower's cell projection, CLIP's
    text embeddings of the classes and its logit scale."""
    weight, bias, norm = clip.cell_projection(model.visual)
    text = clip.encode_classes(model, clip.tokenizer_for(descriptor["model"]), classes, templates)
    return weight, bias, norm, text, clip.logit_scale_of(model)


def online_transfer(settings: Any, adapter: Adapter, frozen: np.ndarray) -> OnlineTransfer | None:
    """The known-label transfer that trains with `adapter` (the `online` method's), or None where it is off."""
    return settings.transfer(adapter) if transfer_on(settings, frozen) else None


def select_images(split: TrainSplit, features: dict[str, np.ndarray] | None, keep: np.ndarray
                  ) -> tuple[TrainSplit, dict[str, np.ndarray] | None]:
    """The images `keep` (bool [N]) selects, in order, and their tower features (each array's first axis)."""
    idx = np.flatnonzero(keep)
    part = replace(split, rows=split.rows[idx], image_ids=[split.image_ids[i] for i in idx],
                   paths=[split.paths[i] for i in idx], z0=split.z0[idx],
                   host_boxes=None if split.host_boxes is None else split.host_boxes[idx])
    return part, None if features is None else {name: array[idx] for name, array in features.items()}


def composite_inputs(model: nn.Module | None, split: TrainSplit, features: dict[str, np.ndarray] | None,
                     settings: SewSettings, pool: np.ndarray, host_weights: np.ndarray | None = None
                     ) -> tuple[SewDataset, nn.Module | None, tuple[torch.Tensor, torch.Tensor] | None]:
    """(the composites of the split, the frozen tower and its normalizer): pasted in pixels and encoded by the
    tower, or (`features`) pasted in feature space, with no tower."""
    if features is None:
        return (SewDataset(split.paths, settings.image_size, pool, settings, split.host_boxes, host_weights),
                model.visual, clip.normalizer_of(model))
    return FeatureSewDataset(features, pool, settings, split.host_boxes, host_weights), None, None


def plain_logits(model: nn.Module | None, adapter: Adapter, split: TrainSplit,
                 features: dict[str, np.ndarray] | None, settings: SewSettings) -> np.ndarray:
    """The adapter's logits on the train images as they are, without overlays. [N, C]"""
    dataset, visual, normalizer = composite_inputs(model, split, features, settings, np.zeros(0, np.int64))
    return predict_hosts(visual, normalizer, adapter, dataset, settings.batch_size)


def fit_adapter(model: nn.Module | None, descriptor: dict, split: TrainSplit, targets: np.ndarray,
                frozen: np.ndarray, recipe: AdapterRecipe, work_dir: str | Path, desc: str,
                weights: np.ndarray | None = None, features: dict[str, np.ndarray] | None = None,
                ) -> tuple[AdapterSpec, Adapter, np.ndarray, np.ndarray, np.ndarray]:
    """Train an adapter on `model`'s frozen tower (described by `descriptor`) with composites of the split,
    as `recipe` says.

    targets [N, C]: label logits of the train images; frozen [N, C]: entries EM keeps (known labels);
    weights [N, C]: the rule's loss weights (label distributions), or None.
    `features` (pipeline.features.read_feature_store): the tower's features of the split, so composites
    are pasted in feature space and `model` is not needed (None); else composites are pasted in pixels.
    The recipe's transfer (HST, pipeline.hst, or TRM-ML, pipeline.trm; off where its settings say so or
    nothing is known) trains with the adapter, and the unknown entries it raises or lowers on the plain images are
    raised or lowered in the refined Z.
    Resumes from a checkpoint in `work_dir` left by the same run; shows progress as `desc`.
    Returns (the adapter's spec, the adapter, refined Z [N, C], and the entries the transfer raised and
    lowered [N, C] bool).
    """
    settings, options, rule, transfer = recipe.settings, recipe.options, recipe.rule, recipe.transfer
    image_size = settings.image_size
    if rule.paper_setting:  # the papers train on the plain images; the overlay pool would rank by CLIP's z⁰
        settings = replace(settings, max_overlays=0)
    k = settings.pool_size(len(split.paths), len(split.classes))
    pool = overlay_pool_pairs(split.z0, k) if settings.overlay_label == "pooled" else overlay_pool(split.z0, k)
    host_weights = sigmoid(targets).astype(np.float32)
    shape = {**asdict(options), "prediction": adapter_prediction(transfer, frozen, rule.paper_setting)}
    start = None
    if needs_region_head(transfer, frozen):  # before seeding: a tower built here draws its random init first
        start = region_head_start(model if model is not None else clip.load_described(descriptor), descriptor,
                                  split.classes, split.templates)
        shape |= {"embed": start[0].shape[0], "cell_norm": start[2] is not None}
    torch.manual_seed(settings.seed)
    if features is None:
        adapter = adapter_for(model, len(split.classes), image_size, **shape)
    else:
        adapter = adapter_for_grid(features[GRID].shape, len(split.classes), **shape)
    dataset, visual, normalizer = composite_inputs(model, split, features, settings, pool, host_weights)
    if start is not None:
        adapter.set_joint_space(*start)
    online = online_transfer(transfer, adapter, frozen)
    steps = settings.epochs * max(1, len(dataset) // settings.batch_size)
    bar = progress_bar(total=steps, desc=desc, unit="step")

    def on_step(epoch: int, step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", refresh=False)

    run_id = fingerprint(asdict(settings), asdict(rule), adapter.cfg.to_dict(), image_size, descriptor,
                         targets, frozen, split.z0, split.image_ids,
                         None if online is None else (type(transfer).__name__, asdict(transfer)))
    refined = train_adapter_em(visual, normalizer, adapter, dataset, targets, frozen, settings,
                               num_workers=settings.num_workers, on_step=on_step, rule=rule, weights=weights,
                               checkpointer=Checkpointer(work_dir, run_id, log=tqdm.write), transfer=online)
    bar.close()
    raised, lowered = np.zeros(refined.shape, bool), np.zeros(refined.shape, bool)
    if online is not None:  # the transfer's labels of the plain images join the labels the student learns from
        sign = known_sign_of(torch.from_numpy(np.asarray(targets, np.float32)), torch.from_numpy(np.asarray(frozen)))
        # batch by batch: the transfer labels rows independently, and all hosts' cells need not be held at once
        moved = map_hosts(lambda f, rows: torch.stack(online.final(adapter_pass(adapter, f), sign[rows]), -1),
                          visual, normalizer, adapter, dataset, settings.batch_size)
        raised, lowered = moved[..., 0].numpy(), moved[..., 1].numpy()
        refined = apply_transfer(refined, raised, lowered, online.raise_logit)
    return AdapterSpec(adapter.cfg, image_size, split.classes, descriptor), adapter, refined, raised, lowered
