"""Stage `correct`: initial labels (+ known labels) → data/labels/corrected.parquet (column `corrected`)
and data/prototypes.zarr.

With known labels (ratio > 0) the `correct`-role methods (`method: prototypes`, `cooccurrence`) transfer them
to unknown entries (pipeline.transfer); known entries are then written over everything, so they always win.
"""

from __future__ import annotations

import numpy as np

from pipeline.correct import KNOWN_MIN_EACH, Correction, correct_with_known, train_label_figures
from pipeline.methods import METHODS
from pipeline.storage import Table, scored_embeddings, write_small_store, write_table
from stages.common import CORRECTED, INITIAL, MANIFEST, OBSERVED, PROTOTYPES, SCORES, Params
from stages.method_params import build_methods


def check(params: Params) -> tuple[Correction, list]:
    """The correction, and the transfers of the chosen `correct`-role methods."""
    return params.section("correct").build(Correction), build_methods(params, ("correct",)).corrections


def run(params: Params) -> None:
    correction, transfers = check(params)
    initial, observed, manifest = Table(INITIAL), Table(OBSERVED), Table(MANIFEST)
    known = observed.column("known").astype(bool)
    any_known = bool(known.any())
    labels = observed.column("labels")  # the known entries' values (the manifest's, or a person's answers)
    source, split = initial.column(correction.source), initial.column("split")
    out = correct_with_known(source, known, labels, correction, transfers,
                             embeddings=lambda: scored_embeddings(SCORES), train=split == "train")
    ran = {t.NAME for t in transfers} if any_known else set()  # each correct-role method: did it transfer
    write_small_store(PROTOTYPES, out.store, {**{name: name in ran for name, cls in METHODS.items()
                                                 if cls.ROLE == "correct"}, "classes": initial.classes})
    write_table(CORRECTED, {"image_id": initial.column("image_id"), "split": split, "corrected": out.target,
                            "raised": out.raised.astype(np.int8), "lowered": out.lowered.astype(np.int8)},
                initial.classes)
    up, down = out.raised, out.lowered
    print(f"corrected {correction.source} with {correction.method} on top-{correction.beta}; {int(known.sum())} "
          f"known entries fixed; {int(up.sum())} unknown entries raised, {int(down.sum())} lowered by transfer "
          f"→ {CORRECTED}")
    if out.calibrated is not None:
        left = [c for c, fitted in zip(initial.classes, out.calibrated, strict=True) if not fitted]
        print(f"calibration known: {len(out.calibrated) - len(left)} of {len(out.calibrated)} classes fitted to "
              "their known train entries" + (f"; {', '.join(left)} (fewer than {KNOWN_MIN_EACH} known positives "
                                             "or negatives) keep the median shift" if left else ""))
    for t in transfers:  # a gated method: where its moves survived its held-out check
        if f"{t.SECTION}_gate" in out.store:
            kept = out.store[f"{t.SECTION}_gate"].astype(bool)
            names = ", ".join(c for c, k in zip(initial.classes, kept, strict=True) if k) or "none"
            print(f"{t.NAME}: moves kept in {int(kept.sum())} of {len(kept)} classes, where they raised the AP "
                  f"of the held-out known entries ({names})")
    if manifest.has("labels"):  # a person tuning β wants to see at once what the correction did to the order
        f = train_label_figures(manifest.column("labels"), source, out, split == "train")
        print(f"train inversions: {f['inversions_before']} before, {f['inversions_after']} after")
        if f["raised_truly_positive"] is not None:
            print(f"raised train entries truly positive: {f['raised_truly_positive']:.3f}")
        if f["lowered_truly_negative"] is not None:
            print(f"lowered train entries truly negative: {f['lowered_truly_negative']:.3f}")
