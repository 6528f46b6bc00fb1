"""Stage `features`: the frozen tower's grid features of every train image, as it is and shrunk to each
overlay size → data/features.zarr (pipeline.features). `sew` and `ceiling` paste composites from them
with `sew.composites: features`, so no tower forward is left in their training loops."""

from __future__ import annotations

from pipeline import clip
from pipeline.features import BackboneSettings, backbone_descriptor, encode_images, write_feature_store
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
    train = manifest.column("split") == "train"
    image_ids, paths = list(manifest.column("image_id")[train]), list(manifest_paths(manifest)[train])
    descriptor = backbone_descriptor(backbone, TEACHER_DESCRIPTOR)
    model = clip.load_described(descriptor)
    arrays = encode_images(model.visual, clip.normalizer_of(model), paths, image_size, settings.overlay_side,
                           settings.max_overlays)
    write_feature_store(FEATURES, image_ids, arrays, {"image_size": image_size, "backbone": descriptor,
                                                      "overlay_side": settings.overlay_side,
                                                      "max_overlays": settings.max_overlays})
    shapes = ", ".join(f"{k} {list(v.shape[1:])}" for k, v in arrays.items())
    print(f"tower features of {len(paths)} train images at {image_size} px ({shapes}) → {FEATURES}")
