"""Stage `mask`: which train labels are known, and their values → data/prepared/observed.parquet (top-level
`known`, `ratio`, `seed`; data/answers.parquet where `known` reads answers)."""

from __future__ import annotations

from pathlib import Path

from pipeline.masking import MaskSettings, known_labels, read_answers
from pipeline.storage import Table, write_table
from stages.common import MANIFEST, OBSERVED, Params

ANSWERS = Path("data") / "answers.parquet"  # a person's answers (git-tracked; empty as committed)


def check(params: Params) -> MaskSettings:
    return params.build(MaskSettings)


def run(params: Params) -> None:
    settings = check(params)
    manifest = Table(MANIFEST)
    train = manifest.column("split") == "train"
    truth = manifest.column("labels") if manifest.has("labels") else None
    answers = (read_answers(ANSWERS, list(manifest.column("image_id")), list(manifest.classes), train)
               if settings.reads_answers else None)
    known, labels = known_labels(settings, truth, train, answers)
    write_table(OBSERVED, {"image_id": manifest.column("image_id"), "known": known, "labels": labels},
                manifest.classes)
    answered = "" if answers is None else f", {int(answers[0].sum())} of them answered in {ANSWERS}"
    print(f"known={settings.known}, ratio={settings.ratio}: {int(known.sum())} of "
          f"{int(train.sum()) * known.shape[1]} train label entries known{answered} → {OBSERVED}")
