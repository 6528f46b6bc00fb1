"""Stage `ceiling`: the same adapter trained on the true train labels (the "fully supervised" row of
every paper table) → data/models/ceiling.pt. Skipped, with a note, when the dataset has no labels."""

from __future__ import annotations

import numpy as np

from pipeline.adaptation import AdapterRecipe, fit_adapter, needs_host_boxes, read_train_split, tower_inputs
from pipeline.adapter import AdapterOptions
from pipeline.correct import NEGATIVE_LOGIT, POSITIVE_LOGIT
from pipeline.features import BackboneSettings, backbone_descriptor
from pipeline.models import NoModel, save_checkpoint
from pipeline.sew import SewSettings
from pipeline.storage import Table
from stages.common import (
    CEILING,
    FEATURES,
    INITIAL,
    MANIFEST,
    SCORES,
    TEACHER_DESCRIPTOR,
    Params,
    clear_work_dir,
    work_dir,
)


def run(params: Params) -> None:
    manifest = Table(MANIFEST)
    if not manifest.has("labels"):
        save_checkpoint(CEILING, NoModel("dataset has no ground truth"))
        print("no ground truth: no supervised ceiling")
        return
    p = params.section("sew")  # the sew stage's composites and adapter, on true labels
    settings = p.build(SewSettings)
    split = read_train_split(MANIFEST, INITIAL, SCORES, needs_host_boxes(settings))
    truth = np.where(manifest.column("labels")[split.rows] > 0, POSITIVE_LOGIT, NEGATIVE_LOGIT).astype(np.float32)
    descriptor = backbone_descriptor(p.section("backbone").build(BackboneSettings), TEACHER_DESCRIPTOR)
    model, features = tower_inputs(settings, descriptor, split, FEATURES)
    recipe = AdapterRecipe(settings, p.section("adapter").build(AdapterOptions))
    spec, adapter, *_ = fit_adapter(model, descriptor, split, truth, np.ones(truth.shape, bool), recipe,
                                   work_dir("ceiling"), "ceiling", features=features)
    save_checkpoint(CEILING, spec, adapter)
    clear_work_dir("ceiling")
    print(f"supervised ceiling adapter → {CEILING}")
