"""Stage `mask`: which train labels are known, and their values → data/prepared/observed.parquet (top-level
`known`, `ratio`, `seed`, `budget`; data/answers.parquet where `known` reads answers; the `init` stage's
initial estimate where `known: uncertain` simulates a review)."""

from __future__ import annotations

from pipeline.masking import MaskSettings, known_labels, read_answers
from pipeline.storage import DataError, Table, write_table
from stages.common import ANSWERS, INITIAL, MANIFEST, OBSERVED, Params, ParamsError

REVIEWED = "cut"  # the initial estimate `known: uncertain` ranks (what `correct` reads by default)


def check(params: Params) -> MaskSettings:
    settings = params.build(MaskSettings)
    if settings.reviews and settings.budget == 0:
        raise ParamsError("known: uncertain answers the budget share of the train entries, and budget: 0 is none; "
                          "set budget > 0 (0.02: 2 % of the entries)")
    return settings


def run(params: Params) -> None:
    settings = check(params)
    manifest = Table(MANIFEST)
    train = manifest.column("split") == "train"
    truth = manifest.column("labels") if manifest.has("labels") else None
    answers = (read_answers(ANSWERS, list(manifest.column("image_id")), list(manifest.classes), train)
               if settings.reads_answers else None)
    initial = None
    if settings.reviews:
        table = Table(INITIAL)
        if list(table.column("image_id")) != list(manifest.column("image_id")):
            raise DataError(f"{INITIAL} is not of the images of {MANIFEST}: run `dvc repro init` first")
        initial = table.column(REVIEWED)
    known, labels = known_labels(settings, truth, train, answers, initial)
    write_table(OBSERVED, {"image_id": manifest.column("image_id"), "known": known, "labels": labels},
                manifest.classes)
    answered = "" if answers is None else f", {int(answers[0].sum())} of them answered in {ANSWERS}"
    if settings.reviews:
        answered = (f", the budget {settings.budget} a review of the initial '{REVIEWED}' shows first, answered "
                    "from the truth")
    print(f"known={settings.known}, ratio={settings.ratio}: {int(known.sum())} of "
          f"{int(train.sum()) * known.shape[1]} train label entries known{answered} → {OBSERVED}")
