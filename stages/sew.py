"""Stage `sew`: corrected labels → multi-object blend adaptation with EM (TailorCLIP Algorithm 1) →
data/models/adapter.pt and data/labels/refined.parquet (Z after EM)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from pipeline import clip
from pipeline.adapter import adapter_for
from pipeline.cut import best_view_boxes
from pipeline.logits import sigmoid
from pipeline.progress import progress_bar
from pipeline.resume import Checkpointer, fingerprint
from pipeline.rules import NO_RULE, RuleSettings
from pipeline.sew import (
    E_STEPS,
    OVERLAY_LABELS,
    PASTES,
    SewDataset,
    SewSettings,
    overlay_pool,
    overlay_pool_pairs,
    train_adapter_em,
)
from pipeline.storage import Table, atomic_path, manifest_paths, open_store, write_table
from stages.common import (
    ADAPTER,
    CORRECTED,
    INITIAL,
    MANIFEST,
    OBSERVED,
    REFINED,
    SCORES,
    TEACHER_DESCRIPTOR,
    Params,
    clear_work_dir,
    read_json,
    resolve_weights,
    work_dir,
)
from stages.rule import rule_settings, rule_weights


def sew_settings(p: Params) -> SewSettings:
    k = p.get("k", (int, str))
    if k != "auto" and (isinstance(k, str) or k < 1):
        k = p.fail("k", f"must be auto or an int >= 1, got {k!r}", "auto")
    d = SewSettings()
    return SewSettings(p=p.get("p", float, lo=0.0, hi=1.0), q=p.get("q", float, lo=0.0, hi=1.0),
                       max_overlays=p.get("L", int, lo=0), pool_k=None if k == "auto" else k,
                       pool_share=p.get("pool_share", float, lo=0.0, hi=1.0, default=d.pool_share),
                       overlay_label=p.get("overlay_label", str, choices=OVERLAY_LABELS, default=d.overlay_label),
                       paste=p.get("paste", str, choices=PASTES, default=d.paste),
                       placement_tries=p.get("placement_tries", int, lo=1, default=d.placement_tries),
                       cover_limit=p.get("cover_limit", float, lo=0.0, hi=1.0, default=d.cover_limit),
                       e_step=p.get("e_step", str, choices=E_STEPS, default=d.e_step),
                       e_weight=p.get("e_weight", float, lo=0.0, hi=1.0, default=d.e_weight),
                       e_rounds=p.get("e_rounds", int, lo=1, default=d.e_rounds),
                       epochs=p.get("epochs", int, lo=1),
                       batch_size=p.get("batch_size", int, lo=2), lr=p.get("lr", float, lo=0.0),
                       estimator_lr=p.get("estimator_lr", float, lo=0.0),
                       weight_decay=p.get("weight_decay", float, lo=0.0, default=d.weight_decay),
                       seed=p.get("seed", int))


def adapter_options(p: Params) -> dict:
    a = p.section("adapter")
    return {"hidden": a.get("hidden", int, lo=1), "layers": a.get("layers", int, lo=1),
            "heads": a.get("heads", int, lo=1), "residual": a.get("residual", float, lo=0.0, hi=1.0)}


def check(params: Params) -> None:
    p = params.section("sew")
    sew_settings(p), adapter_options(p), rule_settings(params)
    p.get("image_size", int, lo=8), p.get("num_workers", int, lo=0)
    b = p.section("backbone")
    pretrained = b.get("pretrained", str)
    b.get("trust_checkpoint", bool, default=False)
    if b.get("model", str) != "teacher":
        resolve_weights(b, b.model_name("model"), pretrained)


def scored_view_boxes() -> np.ndarray:
    """The best-scoring local view's box of every class of every image. [N, C, 4]"""
    store = open_store(SCORES, required=("local", "crops", "boxes"))
    return best_view_boxes(*(np.asarray(store[name][:], dtype=np.float32) for name in ("local", "crops", "boxes")))


def backbone_descriptor(p: Params) -> dict:
    """The frozen tower the adapter trains on: the teacher's (default) or a model of its own, as the
    papers score with RN50x64 and adapt RN101."""
    b = p.section("backbone")
    name = b.get("model", str)
    if name == "teacher":
        return read_json(TEACHER_DESCRIPTOR)
    return clip.describe(name, b.get("pretrained", str), b.get("trust_checkpoint", bool, default=False))


def train_adapter(params: Params, targets: np.ndarray, frozen: np.ndarray, desc: str, rule: RuleSettings = NO_RULE):
    """Shared by `sew` and the supervised ceiling: train an adapter on composites of the train split.

    Returns (checkpoint dict, refined Z of the train rows, train mask).
    """
    p = params.section("sew")
    settings = sew_settings(p)
    manifest = Table(MANIFEST)
    train = manifest.column("split") == "train"
    paths = list(manifest_paths(manifest)[train])
    z0 = Table(INITIAL).column("z0")[train]
    host_boxes = scored_view_boxes()[train] if settings.placement_tries > 1 or settings.cover_limit < 1 else None
    descriptor = backbone_descriptor(p)
    model = clip.load_described(descriptor)
    torch.manual_seed(settings.seed)
    size = p.get("image_size", int, lo=8)
    adapter = adapter_for(model, len(manifest.classes), size, **adapter_options(p))
    k = settings.pool_size(len(paths), len(manifest.classes))
    pool = overlay_pool_pairs(z0, k) if settings.overlay_label == "pooled" else overlay_pool(z0, k)
    dataset = SewDataset(paths, size, pool, settings, host_boxes, sigmoid(targets[train]).astype(np.float32))
    steps = settings.epochs * max(1, len(dataset) // settings.batch_size)
    bar = progress_bar(total=steps, desc=desc, unit="step")

    def on_step(epoch: int, step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", refresh=False)

    run_id = fingerprint(asdict(settings), asdict(rule), adapter.cfg.to_dict(), size, descriptor,
                         targets, frozen, z0, list(manifest.column("image_id")))
    checkpointer = Checkpointer(work_dir(desc), run_id, log=tqdm.write)
    refined = train_adapter_em(model.visual, clip.normalizer_of(model), adapter, dataset, targets[train],
                               frozen[train], settings, num_workers=p.get("num_workers", int, lo=0),
                               on_step=on_step, rule=rule,
                               weights=rule_weights(rule, targets[train], np.flatnonzero(train)),
                               checkpointer=checkpointer)
    bar.close()
    ckpt = {"kind": "adapter", "adapter_config": adapter.cfg.to_dict(), "state_dict": adapter.state_dict(),
            "image_size": size, "classes": manifest.classes, "backbone": descriptor}
    return ckpt, refined, train


def run(params: Params) -> None:
    check(params)
    corrected, observed = Table(CORRECTED), Table(OBSERVED)
    rule = rule_settings(params)
    ckpt, refined, train = train_adapter(params, corrected.column("corrected"),
                                         observed.column("known").astype(bool), "sew", rule)
    with atomic_path(ADAPTER) as tmp:
        torch.save(ckpt, tmp)
    write_table(REFINED, {"image_id": corrected.column("image_id")[train],
                          "split": corrected.column("split")[train], "refined": refined}, corrected.classes)
    clear_work_dir("sew")
    print(f"adapter → {ADAPTER}; EM-refined labels of {int(train.sum())} train images → {REFINED}")
