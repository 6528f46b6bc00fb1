"""Stage `sew`: corrected labels → multi-object blend adaptation with EM (TailorCLIP Algorithm 1) →
data/models/adapter.pt and data/labels/refined.parquet (Z after EM)."""

from __future__ import annotations

import numpy as np

from pipeline.adaptation import AdapterRecipe, fit_adapter, needs_host_boxes, read_train_split, tower_inputs
from pipeline.adapter import AdapterOptions
from pipeline.features import BackboneSettings, backbone_descriptor
from pipeline.masking import MaskSettings
from pipeline.models import save_checkpoint
from pipeline.sew import SewSettings
from pipeline.storage import Table, write_table
from stages.common import (
    ADAPTER,
    CORRECTED,
    FEATURES,
    INITIAL,
    MANIFEST,
    OBSERVED,
    REFINED,
    SCORES,
    TEACHER_DESCRIPTOR,
    Params,
    ParamsError,
    clear_work_dir,
    resolve_weights,
    work_dir,
)
from stages.method_params import build_methods


def check(params: Params) -> AdapterRecipe:
    p = params.section("sew")
    methods = build_methods(params, ("rule", "online"))
    rule = methods.rule
    mask = params.build(MaskSettings)
    if rule.paper_setting and mask.known == "random" and mask.ratio == 0:
        raise ParamsError(f"unknown: {rule.unknown} trains on the known labels alone, and ratio: 0 knows none; "
                          "set ratio > 0, known: answers, or unknown: pseudo to train on CLIP's pseudo labels")
    recipe = AdapterRecipe(p.build(SewSettings), p.section("adapter").build(AdapterOptions), rule,
                           methods.online)
    b = p.section("backbone")
    if b.build(BackboneSettings).model != "teacher":  # a tower of its own: a known model, weights on this machine
        resolve_weights(b, b.model_name("model"), b.get("pretrained", str))
    return recipe


def run(params: Params) -> None:
    recipe = check(params)
    settings, rule, transfer = recipe.settings, recipe.rule, recipe.transfer
    p = params.section("sew")
    corrected, observed = Table(CORRECTED), Table(OBSERVED)
    split = read_train_split(MANIFEST, INITIAL, SCORES, needs_host_boxes(settings))
    targets = corrected.column("corrected")[split.rows]
    known = observed.column("known").astype(bool)[split.rows]
    # in the papers' settings a label distribution spreads over the known positives only, never CLIP's
    positives = np.where(known, targets, -1.0) if rule.paper_setting else targets
    descriptor = backbone_descriptor(p.section("backbone").build(BackboneSettings), TEACHER_DESCRIPTOR)
    model, features = tower_inputs(settings, descriptor, split, FEATURES)
    spec, adapter, refined, raised, lowered = fit_adapter(
        model, descriptor, split, targets, known, recipe, work_dir("sew"), "sew",
        rule.entry_weights(positives, SCORES, split.rows), features)
    save_checkpoint(ADAPTER, spec, adapter)
    write_table(REFINED, {"image_id": corrected.column("image_id")[split.rows],
                          "split": corrected.column("split")[split.rows], "refined": refined,
                          "raised": raised.astype(np.int8), "lowered": lowered.astype(np.int8)}, corrected.classes)
    clear_work_dir("sew")
    print(f"adapter → {ADAPTER}; EM-refined labels of {len(split.rows)} train images → {REFINED}")
    if transfer is not None:
        print(f"{transfer.NAME} raised {int(raised.sum())} unknown entries, lowered {int(lowered.sum())}")
