"""Stage `distill`: the standalone student → data/models/student.pt.

`distill.student: frozen_tower` exports the adapter's frozen tower + the sew adapter as one module;
`small_cnn` trains a small CNN on the refined labels with CDUL's consistency term.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from tqdm import tqdm

from pipeline.images import ResizedImages
from pipeline.models import DistillSettings, SmallCNNSpec, save_checkpoint, student_of_adapter, write_checkpoint
from pipeline.progress import progress_bar
from pipeline.resume import Checkpointer, fingerprint
from pipeline.rules import Rule
from pipeline.storage import Table, manifest_paths
from pipeline.student import StudentTraining, train_small_cnn
from stages.common import (
    ADAPTER,
    MANIFEST,
    OBSERVED,
    REFINED,
    SCORES,
    STUDENT,
    Params,
    clear_work_dir,
    work_dir,
)
from stages.method_params import build_methods


def check(params: Params) -> tuple[str, StudentTraining, Rule]:
    """The student, its training, and the chosen training rule (pipeline.rules; `none` where no rule method is)."""
    p = params.section("distill")
    return (p.build(DistillSettings).student, p.section("small_cnn").build(StudentTraining),
            build_methods(params, ("rule",)).rule)


def run(params: Params) -> None:
    kind, training, rule = check(params)
    size = training.image_size
    if kind == "frozen_tower":
        write_checkpoint(STUDENT, student_of_adapter(ADAPTER))  # the tower and the adapter as one module
    else:
        refined, manifest, observed = Table(REFINED), Table(MANIFEST), Table(OBSERVED)
        row_of = {image_id: r for r, image_id in enumerate(manifest.column("image_id"))}
        rows = np.array([row_of[i] for i in refined.column("image_id")])
        paths = list(manifest_paths(manifest)[rows])
        run_id = fingerprint(asdict(training), asdict(rule), size, paths, refined.column("refined"),
                             observed.column("known")[rows])
        steps = training.epochs * int(np.ceil(len(paths) / training.batch_size))
        with progress_bar(total=steps, desc="distill", unit="step") as bar:
            module = train_small_cnn(ResizedImages(paths, size), refined.column("refined"), size, training,
                                     on_step=lambda s, loss: bar.update(1),
                                     known=observed.column("known")[rows].astype(bool), rule=rule,
                                     weights=rule.entry_weights(refined.column("refined"), SCORES, rows),
                                     checkpointer=Checkpointer(work_dir("distill"), run_id, log=tqdm.write))
        save_checkpoint(STUDENT, SmallCNNSpec(len(refined.classes), training.width, size, refined.classes), module)
    clear_work_dir("distill")
    print(f"student ({kind}) → {STUDENT}")
