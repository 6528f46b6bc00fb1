"""Stage `ceiling`: the same adapter trained on the true train labels (the "fully supervised" row of
every paper table) → data/models/ceiling.pt. Skipped, with a note, when the dataset has no labels."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.correct import NEGATIVE_LOGIT, POSITIVE_LOGIT
from pipeline.storage import Table, atomic_path
from stages.common import CEILING, MANIFEST, Params, clear_work_dir
from stages.sew import check, train_adapter  # noqa: F401  (check: ceiling reads the sew params)


def run(params: Params) -> None:
    manifest = Table(MANIFEST)
    if not manifest.has("labels"):
        with atomic_path(CEILING) as tmp:
            torch.save({"kind": "none", "reason": "dataset has no ground truth"}, tmp)
        print("no ground truth: no supervised ceiling")
        return
    truth = np.where(manifest.column("labels") > 0, POSITIVE_LOGIT, NEGATIVE_LOGIT).astype(np.float32)
    ckpt, _, _ = train_adapter(params, truth, np.ones(truth.shape, bool), "ceiling")
    with atomic_path(CEILING) as tmp:
        torch.save(ckpt, tmp)
    clear_work_dir("ceiling")
    print(f"supervised ceiling adapter → {CEILING}")
