"""Stage `init`: cached scores → data/labels/initial.parquet with z⁰ (global), the cut estimator Z
(TailorCLIP eq. 7: max fusion with margin α over the local views `init.views`) and the CDUL global-local
aggregate."""

from __future__ import annotations

import numpy as np

from pipeline.cut import InitSettings, cdul_aggregate, fuse_crops
from pipeline.storage import DataError, Table, ids_digest, open_store, write_table
from stages.common import INITIAL, MANIFEST, SCORES, Params


def check(params: Params) -> InitSettings:
    return params.section("init").build(InitSettings)


def run(params: Params) -> None:
    s = check(params)
    alpha, zeta, views = s.alpha, s.cdul_zeta, s.views
    manifest = Table(MANIFEST)
    store = open_store(SCORES, required=("global", "local", "crops"))
    ids = list(manifest.column("image_id"))
    if store.attrs.get("image_ids_sha256") != ids_digest(ids):
        raise DataError(f"{SCORES} was scored for other images than {MANIFEST}: rerun `mlpl score`")
    z0 = np.asarray(store["global"][:], dtype=np.float32)
    tiles = np.asarray(store["local"][:], dtype=np.float32)
    crops = np.asarray(store["crops"][:], dtype=np.float32)
    local = np.concatenate([tiles, crops], axis=1) if views == "all" else crops
    cut = fuse_crops(z0, local, alpha)
    cdul = cdul_aggregate(z0, tiles, zeta)
    # each view family alone too, so the ladder shows what fusing them buys
    singles = {"tiles": fuse_crops(z0, tiles, alpha), "crops": fuse_crops(z0, crops, alpha)}
    write_table(INITIAL, {"image_id": ids, "split": manifest.column("split"), "z0": z0, **singles, "cdul": cdul,
                          "cut": cut}, manifest.classes)
    print(f"initial labels for {len(ids)} images (z0, cut over {views} local views with α={alpha}, "
          f"cdul ζ={zeta}) → {INITIAL}")
