"""Stage `mask`: which train labels are known → data/prepared/observed.parquet (top-level ratio, seed)."""

from __future__ import annotations

from pipeline.masking import MaskSettings, observed_mask
from pipeline.storage import Table, write_table
from stages.common import MANIFEST, OBSERVED, Params


def check(params: Params) -> tuple[float, int]:
    s = params.build(MaskSettings)
    return s.ratio, s.seed


def run(params: Params) -> None:
    ratio, seed = check(params)
    manifest = Table(MANIFEST)
    split = manifest.column("split")
    known = observed_mask(len(manifest), len(manifest.classes), split == "train", ratio, seed)
    write_table(OBSERVED, {"image_id": manifest.column("image_id"), "known": known}, manifest.classes)
    print(f"ratio={ratio}: {int(known.sum())} of {int((split == 'train').sum()) * known.shape[1]} "
          f"train label entries known → {OBSERVED}")
