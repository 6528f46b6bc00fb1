"""Stage `distill`: the standalone student → data/models/student.pt.

`distill.student: frozen_tower` exports the adapter's frozen tower + the sew adapter as one module;
`small_cnn` trains a small CNN on the refined labels with CDUL's consistency term; `cdul` trains the same small
CNN by CDUL's own procedure on CDUL's initial labels (pipeline.cdul_student: the CDUL row of Table 1).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from tqdm import tqdm

from pipeline.cdul_student import CdulTraining, train_cdul_student
from pipeline.images import ResizedImages
from pipeline.method_gate import GateResult
from pipeline.method_registry import MethodSet
from pipeline.models import DistillSettings, SmallCNNSpec, save_checkpoint, student_of_adapter, write_checkpoint
from pipeline.progress import progress_bar
from pipeline.resume import Checkpointer, fingerprint
from pipeline.rules import Rule
from pipeline.storage import Table, manifest_paths, manifest_rows
from pipeline.student import StudentTraining, train_small_cnn
from stages.common import (
    ADAPTER,
    INITIAL,
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


def check(params: Params) -> tuple[str, StudentTraining, CdulTraining, MethodSet]:
    """The student, its small CNN's training, CDUL's label update, and the chosen methods (the training rule,
    pipeline.rules, is theirs; `none` where no rule method is)."""
    p = params.section("distill")
    return (p.build(DistillSettings).student, p.section("small_cnn").build(StudentTraining),
            p.section("cdul").build(CdulTraining), build_methods(params, ("rule",)))


def gated_rule(methods: MethodSet, refined: Table) -> Rule:
    """The chosen rule, unless sew's held-out gate dropped the methods (pipeline.method_gate): then none."""
    verdict = GateResult.of_table(refined.metadata)
    return methods.rule if verdict is None or verdict.kept else methods.base_rule


def rows_and_paths(manifest: Table, image_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(the manifest rows of `image_ids`, in their order; the images' paths)."""
    rows = manifest_rows(manifest, image_ids)
    return rows, list(manifest_paths(manifest)[rows])


def train_cdul(training: StudentTraining, cdul: CdulTraining) -> None:
    """CDUL's student on the train images, from CDUL's initial labels (`init`'s `cdul` rung)."""
    initial, manifest = Table(INITIAL), Table(MANIFEST)
    train = initial.column("split") == "train"
    _, paths = rows_and_paths(manifest, initial.column("image_id")[train])
    labels = initial.column("cdul")[train]
    size = training.image_size
    run_id = fingerprint(asdict(training), asdict(cdul), size, paths, labels)
    steps = training.epochs * int(np.ceil(len(paths) / training.batch_size))
    with progress_bar(total=steps, desc="distill (CDUL)", unit="step") as bar:
        module, _ = train_cdul_student(ResizedImages(paths, size), labels, size, training, cdul,
                                       on_step=lambda s, loss: bar.update(1),
                                       checkpointer=Checkpointer(work_dir("distill"), run_id, log=tqdm.write))
    save_checkpoint(STUDENT, SmallCNNSpec(len(initial.classes), training.width, size, initial.classes,
                                          log_softmax=True), module)


def train_small(training: StudentTraining, methods: MethodSet) -> None:
    """The small CNN on the refined train labels, under the training rule (where sew's gate kept it)."""
    refined, manifest, observed = Table(REFINED), Table(MANIFEST), Table(OBSERVED)
    rule = gated_rule(methods, refined)
    rows, paths = rows_and_paths(manifest, refined.column("image_id"))
    size = training.image_size
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


def run(params: Params) -> None:
    kind, training, cdul, methods = check(params)
    if kind == "frozen_tower":
        write_checkpoint(STUDENT, student_of_adapter(ADAPTER))  # the tower and the adapter as one module
    elif kind == "cdul":
        train_cdul(training, cdul)
    else:
        train_small(training, methods)
    clear_work_dir("distill")
    print(f"student ({kind}) → {STUDENT}")
