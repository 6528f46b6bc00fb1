"""Stage `sew`: corrected labels → EM refinement → data/models/adapter.pt, data/labels/refined.parquet."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.heads import HeadTraining, train_em_head
from pipeline.storage import Table, atomic_path, open_store, write_table
from stages.common import ADAPTER, CORRECTED, OBSERVED, REFINED, SCORES, Params


def head_training(p: Params) -> HeadTraining:
    return HeadTraining(epochs=p.get("epochs", int, lo=1), batch_size=p.get("batch_size", int, lo=1),
                        lr=p.get("lr", float, lo=0.0), estimator_lr=p.get("estimator_lr", float, lo=0.0, default=0.0),
                        seed=p.get("seed", int))


def run(params: Params) -> None:
    p = params.section("sew")
    corrected, observed = Table(CORRECTED), Table(OBSERVED)
    train = corrected.column("split") == "train"
    features = np.asarray(open_store(SCORES, required=("image_emb",))["image_emb"][:], dtype=np.float32)
    head, refined = train_em_head(features[train], corrected.column("target")[train], head_training(p),
                                  frozen=observed.column("known")[train].astype(bool))
    with atomic_path(ADAPTER) as tmp:
        torch.save({"kind": "linear-em", "state_dict": head.state_dict(), "in_dim": features.shape[1],
                    "classes": corrected.classes}, tmp)
    write_table(REFINED, {"image_id": corrected.column("image_id")[train], "split": corrected.column("split")[train],
                          "z": refined}, corrected.classes)
    print(f"EM refined {int(train.sum())} train label rows → {REFINED}, head → {ADAPTER}")
