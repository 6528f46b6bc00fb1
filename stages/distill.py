"""Stage `distill`: refined labels → the standalone student, data/models/student.pt."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.heads import train_soft_head
from pipeline.storage import Table, atomic_path, open_store
from stages.common import MANIFEST, REFINED, SCORES, STUDENT, TEACHER_DESCRIPTOR, Params, read_json
from stages.sew import head_training


def run(params: Params) -> None:
    p = params.section("distill")
    refined = Table(REFINED)
    store = open_store(SCORES, required=("image_emb",))
    ids = list(Table(MANIFEST).column("image_id"))
    row = {image_id: i for i, image_id in enumerate(ids)}
    rows = np.array([row[i] for i in refined.column("image_id")])
    features = np.asarray(store["image_emb"][:], dtype=np.float32)[rows]
    head = train_soft_head(features, refined.column("z"), head_training(p))
    with atomic_path(STUDENT) as tmp:
        torch.save({"kind": "teacher-embedding+linear", "state_dict": head.state_dict(), "in_dim": features.shape[1],
                    "classes": refined.classes, "teacher": read_json(TEACHER_DESCRIPTOR)}, tmp)
    print(f"student distilled from {len(rows)} refined rows → {STUDENT}")
