"""The frozen tower's features of the train images, computed once (ours; `sew.composites: features`).

The adapter of TailorCLIP §3.4 trains on the frozen visual tower's grid features of composites
(Algorithm 1). Pasting in pixels costs one tower forward per composite per epoch: 8 epochs of the train
set in `sew`, as many again in `ceiling`, and again in every ablation that only changes the labels. Pasting
in feature space costs none: the tower encodes each train image once, as it is (`grid`, the adapter's
input) and shrunk to each overlay size (`overlay_<s>`, an s×s grid of cells), and a composite is the host's
grid with each overlay's s×s grid copied over an s×s window of cells (pipeline.sew.FeatureSewDataset).

An overlay of n takes q/√n of the host's side (pipeline.sew.paste_size); in feature space its side is
rounded to whole cells, s = round(q/√n · G) ≥ 1 for a G×G grid, and it is encoded at s × stride pixels,
the size at which the tower gives it an s×s grid. The tower sees the overlay at the size it has in a pixel
composite, but not the host's pixels around it (its receptive field ends at the overlay's border): the
label quality of both modes is measured in the README. Towers that take only their native size (ViT) get
the overlay's grid by area-pooling its full-size grid instead.

Size: N × D × G² float16 (1,000 train images of the toy tower at 192 px: 37 MB; RN50 at 448 px: 0.8 MB an
image), so for large datasets `sew.composites: pixels` trades it back for compute.

The test images' grid is stored too (`test_grid`, float32, in either composites mode): `evaluate` reads it
for every frozen-tower model over the same tower at the same size instead of running the tower again, so an
experiment that changes only labels or the adapter never encodes an image. It is encoded in the batches
`pipeline.student.predict_paths` uses, in float32, so the logits are the tower path's to the bit (tested);
it doubles the per-image size of a train image's grid (the toy's 500 test images: 37 MB).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from pipeline import clip
from pipeline.images import decode_image, resize_u8
from pipeline.progress import progress_bar
from pipeline.settings import Settings, setting
from pipeline.storage import DataError, atomic_path, ids_digest, open_store, read_json

GRID = "grid"
TEST_GRID, TEST_IMAGE_ID = "test_grid", "test_image_id"
BATCH = 64  # images per tower pass, here and in pipeline.student's predictions: the same batches, the same bits
CHUNK = 4 * BATCH  # images per stored chunk: a reader of whole chunks gets whole batches


def overlay_cells(grid: int, overlay_side: float, n: int) -> int:
    """Side in cells of each of n overlays on a grid×grid host: q/√n of the side, rounded, at least 1."""
    return max(1, min(grid, round(overlay_side / math.sqrt(n) * grid)))


def overlay_sizes(grid: int, overlay_side: float, max_overlays: int) -> tuple[int, ...]:
    """Every overlay side in cells that composites of 1..L overlays use, ascending."""
    return tuple(sorted({overlay_cells(grid, overlay_side, n) for n in range(1, max_overlays + 1)}))


def overlay_key(cells: int) -> str:
    return f"overlay_{cells}"


def _grid_of(visual: torch.nn.Module, decoded: Sequence[torch.Tensor], image_size: int,
             normalizer: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The tower's grid [B, D, G, G] (float32) of decoded images, resized as every reader of images resizes."""
    images = torch.stack([resize_u8(d, image_size) for d in decoded])
    return clip.grid_features(visual, clip.normalize_u8(images, *normalizer)).float()


@torch.inference_mode()
def encode_grid(visual: torch.nn.Module, normalizer: tuple[torch.Tensor, torch.Tensor],
                paths: Sequence[str | Path], image_size: int, desc: str = "features (test)") -> np.ndarray:
    """[N, D, G, G] float32: each image's grid exactly as a FrozenTowerClassifier computes it over these
    batches (pipeline.student.predict_paths), in `paths` order."""
    visual.eval()
    out = []
    with progress_bar(total=len(paths), desc=desc, unit="image") as bar:
        for start in range(0, len(paths), BATCH):
            decoded = [decode_image(p) for p in paths[start:start + BATCH]]
            out.append(_grid_of(visual, decoded, image_size, normalizer).numpy())
            bar.update(len(decoded))
    return np.concatenate(out)


@torch.inference_mode()
def encode_images(visual: torch.nn.Module, normalizer: tuple[torch.Tensor, torch.Tensor], paths: Sequence[str | Path],
                  image_size: int, overlay_side: float, max_overlays: int, batch_size: int = BATCH,
                  desc: str = "features") -> dict[str, np.ndarray]:
    """{grid: [N, D, G, G], overlay_<s>: [N, D, s, s] for each overlay side s} as float16, in `paths` order."""
    visual.eval()
    mean, std = normalizer
    probe = clip.grid_features(visual, torch.zeros(1, 3, image_size, image_size))
    grid = probe.shape[-1]
    if probe.shape[-2] != grid:
        raise ValueError(f"feature composites need a square feature grid, got {tuple(probe.shape[-2:])}")
    stride = image_size / grid
    sizes = overlay_sizes(grid, overlay_side, max_overlays)
    out = {GRID: np.zeros((len(paths), probe.shape[1], grid, grid), np.float16)}
    out.update({overlay_key(s): np.zeros((len(paths), probe.shape[1], s, s), np.float16) for s in sizes})
    native = {s: _takes_size(visual, round(s * stride), s) for s in sizes}
    bar = progress_bar(total=len(paths), desc=desc, unit="image")
    for start in range(0, len(paths), batch_size):
        decoded = [decode_image(p) for p in paths[start:start + batch_size]]
        rows = slice(start, start + len(decoded))
        full = _grid_of(visual, decoded, image_size, normalizer)
        out[GRID][rows] = full.numpy()
        for s in sizes:
            if native[s]:
                small = torch.stack([resize_u8(d, round(s * stride)) for d in decoded])
                feats = clip.grid_features(visual, clip.normalize_u8(small, mean, std)).float()
            else:
                feats = F.adaptive_avg_pool2d(full, s)
            out[overlay_key(s)][rows] = feats.numpy()
        bar.update(len(decoded))
    bar.close()
    return out


def _takes_size(visual: torch.nn.Module, pixels: int, cells: int) -> bool:
    """Whether the tower encodes a pixels² image into a cells×cells grid (ResNets do; a ViT refuses)."""
    try:
        shape = clip.grid_features(visual, torch.zeros(1, 3, pixels, pixels)).shape
    except RuntimeError:
        return False
    return tuple(shape[-2:]) == (cells, cells)


def write_feature_store(path: str | Path, image_ids: Sequence[str], arrays: dict[str, np.ndarray],
                        attrs: dict, test: tuple[Sequence[str], np.ndarray] | None = None) -> None:
    """Zarr v3 group, chunked by CHUNK images, written atomically; `test`: (the test images' ids, their grid)."""
    with atomic_path(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        ids = {"image_id": image_ids} | ({TEST_IMAGE_ID: test[0]} if test is not None else {})
        for name, values in ids.items():
            group.create_array(name, shape=(len(values),), dtype=str, dimension_names=("image",))[...] = \
                np.asarray(values, dtype=str)
        for name, value in (arrays | ({TEST_GRID: test[1]} if test is not None else {})).items():
            chunks = (min(CHUNK, max(1, value.shape[0])),) + value.shape[1:]
            group.create_array(name, shape=value.shape, dtype=value.dtype, chunks=chunks,
                               dimension_names=("image", "channel", "row", "column"))[...] = value
        digests = {"image_ids_sha256": ids_digest(image_ids)}
        if test is not None:
            digests["test_image_ids_sha256"] = ids_digest(test[0])
        group.attrs.update({**attrs, **digests})


@dataclass(frozen=True)
class StoredGrid:
    """The test images' grid as the tower of `backbone_sha256` encodes them at `image_size` (float32), left
    in the store (a Zarr array, read a chunk at a time: a large test split's grid need not fit in memory)."""

    grid: zarr.Array
    backbone_sha256: str
    image_size: int


def read_test_grid(path: str | Path, image_ids: Sequence[str]) -> StoredGrid | None:
    """The stored grid of the test images `image_ids`; None where the store holds none (a dataset without a
    test split, a store from before) or one of other images (the caller then runs the tower)."""
    store = open_store(path)
    attrs = dict(store.attrs)
    if TEST_GRID not in store or attrs.get("test_image_ids_sha256") != ids_digest(image_ids):
        return None
    return StoredGrid(store[TEST_GRID], attrs["backbone"]["sha256"], int(attrs["image_size"]))


def read_feature_store(path: str | Path, image_ids: Sequence[str], image_size: int,
                       overlay_side: float, max_overlays: int) -> dict[str, np.ndarray]:
    """The arrays of a feature store, checked against what the caller trains on."""
    store = open_store(path, required=(GRID,))
    attrs = dict(store.attrs)
    if attrs.get("image_ids_sha256") != ids_digest(image_ids):
        raise DataError(f"{path} holds features of other images than the train split: rerun `mlpl features`")
    if attrs.get("image_size") != image_size:
        raise DataError(f"{path} was encoded at {attrs.get('image_size')} px, sew.image_size is {image_size}: "
                        "rerun `mlpl features`")
    grid = store[GRID].shape[-1]
    sizes = overlay_sizes(grid, overlay_side, max_overlays)
    missing = [overlay_key(s) for s in sizes if overlay_key(s) not in store]
    if missing:
        raise DataError(f"{path} lacks {missing} for sew.overlay_side={overlay_side}, "
                        f"sew.max_overlays={max_overlays}: rerun `mlpl features`")
    return {name: np.asarray(store[name][:]) for name in (GRID, *map(overlay_key, sizes))}


@dataclass(frozen=True)
class BackboneSettings(Settings):
    """Section `sew.backbone`: the frozen tower the adapter trains on."""

    model: str = setting("teacher")  # `teacher` (the scoring model) or an open_clip config, e.g. RN101-quickgelu
    pretrained: str = setting("")  # for a model of its own: open_clip tag or local file, resolved offline
    trust_checkpoint: bool = setting(False)  # an OpenAI TorchScript file may run code: only files you trust

    SECTION: ClassVar[str] = "sew.backbone"


def backbone_descriptor(backbone: BackboneSettings, teacher_descriptor: str | Path) -> dict:
    """The frozen tower the adapter trains on: the teacher's (`model: teacher`, the default) or a model of
    its own, as the papers score with RN50x64 and adapt RN101."""
    if backbone.model == "teacher":
        return read_json(teacher_descriptor)
    return clip.describe(backbone.model, backbone.pretrained, backbone.trust_checkpoint)
