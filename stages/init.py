"""Stage `init`: cached scores → data/labels/initial.parquet with z⁰ (global), the cut estimator Z
(max fusion over crops with α) and the CDUL global-local aggregate."""

from __future__ import annotations

import numpy as np

from pipeline.cut import cdul_aggregate, fuse_crops
from pipeline.storage import DataError, Table, ids_digest, open_store, write_table
from stages.common import INITIAL, MANIFEST, SCORES, Params


def check(params: Params) -> tuple[float, float]:
    p = params.section("init")
    return p.get("alpha", float, lo=0.0), p.get("cdul_zeta", float, lo=0.0, hi=1.0)


def run(params: Params) -> None:
    alpha, zeta = check(params)
    manifest = Table(MANIFEST)
    store = open_store(SCORES, required=("global", "local", "crops"))
    ids = list(manifest.column("image_id"))
    if store.attrs.get("image_ids_sha256") != ids_digest(ids):
        raise DataError(f"{SCORES} was scored for other images than {MANIFEST}: rerun `mlpl score`")
    z0 = np.asarray(store["global"][:], dtype=np.float32)
    cut = fuse_crops(z0, np.asarray(store["crops"][:], dtype=np.float32), alpha)
    cdul = cdul_aggregate(z0, np.asarray(store["local"][:], dtype=np.float32), zeta)
    write_table(INITIAL, {"image_id": ids, "split": manifest.column("split"), "z0": z0, "cut": cut, "cdul": cdul},
                manifest.classes)
    print(f"initial labels for {len(ids)} images (z0, cut α={alpha}, cdul ζ={zeta}) → {INITIAL}")
