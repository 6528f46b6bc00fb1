"""Stage `features`: the frozen tower's grid features of every train image, as it is and shrunk to each
overlay size, and of every test image as it is → data/features.zarr (pipeline.features). With
`sew.composites: features`, `sew` and `ceiling` paste composites from them, so no tower forward is left in
their training loops; `evaluate` predicts the test images from them, so no experiment on labels or the
adapter runs the tower."""

from __future__ import annotations

from pipeline import clip
from pipeline.features import (
    BackboneSettings,
    backbone_descriptor,
    encode_grid,
    encode_images,
    write_feature_store,
)
from pipeline.sew import SewSettings
from pipeline.storage import Table, manifest_paths
from stages.common import FEATURES, MANIFEST, TEACHER_DESCRIPTOR, Params


def check(params: Params) -> tuple[SewSettings, BackboneSettings]:
    p = params.section("sew")
    return p.build(SewSettings), p.section("backbone").build(BackboneSettings)


def run(params: Params) -> None:
    settings, backbone = check(params)
    image_size = settings.image_size
    manifest = Table(MANIFEST)
    split, ids, all_paths = manifest.column("split"), manifest.column("image_id"), manifest_paths(manifest)
    train, test = split == "train", split == "test"
    paths = list(all_paths[train])
    descriptor = backbone_descriptor(backbone, TEACHER_DESCRIPTOR)
    model = clip.load_described(descriptor)
    normalizer = clip.normalizer_of(model)
    arrays = encode_images(model.visual, normalizer, paths, image_size, settings.overlay_side, settings.max_overlays)
    test_grid = None
    if test.any():
        test_grid = (list(ids[test]), encode_grid(model.visual, normalizer, list(all_paths[test]), image_size))
    write_feature_store(FEATURES, list(ids[train]), arrays,
                        {"image_size": image_size, "backbone": descriptor, "overlay_side": settings.overlay_side,
                         "max_overlays": settings.max_overlays}, test=test_grid)
    shapes = ", ".join(f"{k} {list(v.shape[1:])}" for k, v in arrays.items())
    print(f"tower features of {len(paths)} train images at {image_size} px ({shapes})"
          + (f" and of {len(test_grid[0])} test images" if test_grid else "") + f" → {FEATURES}")
