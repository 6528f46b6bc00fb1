"""Stage `prepare`: the dataset → data/prepared/manifest.parquet.

`dataset.format: embedded` generates the seeded scene benchmark (PNG files in data/prepared/images);
`folder` imports a directory of images with a CSV/Parquet label table, `voc` a VOC20xx directory, `coco`
a COCO 2014 directory (train2014 → train, val2014 → test), `nuswide` NUS-WIDE's lists and label files
(images stay where they are; data/prepared/images then only holds a note naming the root and each
image's size and mtime).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.datasets import ImportedDataset, read_coco, read_folder, read_nuswide, read_voc
from pipeline.scenes import SceneConfig, render_scene, scene_rng
from pipeline.storage import atomic_path, write_table
from stages.common import IMAGES_DIR, MANIFEST, Params

DATASET_STREAM = 0  # the teacher trains on scenes of another stream: never on these
FORMATS = ("embedded", "folder", "voc", "coco", "nuswide")


def scene_config(p: Params) -> SceneConfig:
    return SceneConfig(image_size=p.get("image_size", int, lo=16), n_classes=p.get("n_classes", int, lo=2, hi=8),
                       max_small=p.get("max_small", int, lo=0, hi=5))


def run(params: Params) -> None:
    p = params.section("dataset")
    fmt = p.get("format", str, choices=FORMATS)
    if fmt == "folder":
        classes = p.get("classes", (list, type(None)), default=None)
        return write_imported(read_folder(p.get("root", str), p.get("labels", str), classes,
                                          p.get("test_fraction", float, lo=0.0, hi=1.0, default=0.2),
                                          p.get("seed", int)), fmt)
    if fmt == "voc":
        return write_imported(read_voc(p.get("root", str), p.get("train_set", str, default="trainval"),
                                       p.get("test_set", str, default="test"),
                                       p.get("include_difficult", bool, default=True)), fmt)
    if fmt == "coco":
        return write_imported(read_coco(p.get("root", str)), fmt)
    if fmt == "nuswide":
        return write_imported(read_nuswide(p.get("root", str), p.get("images_dir", str, default="Flickr")), fmt)
    cfg = scene_config(p)
    seed = p.get("seed", int)
    n_train, n_test = p.get("n_train", int, lo=1), p.get("n_test", int, lo=1)
    ids, paths, splits, labels, salient = [], [], [], [], []
    with atomic_path(IMAGES_DIR) as tmp:
        tmp.mkdir()
        for i in tqdm(range(n_train + n_test), desc="prepare", unit="img"):
            scene = render_scene(scene_rng(seed, DATASET_STREAM, i), cfg)
            image_id = f"scene-{i:06d}"
            Image.fromarray(scene.image).save(tmp / f"{image_id}.png")
            ids.append(image_id)
            paths.append(f"{image_id}.png")
            splits.append("train" if i < n_train else "test")
            labels.append(scene.labels)
            salient.append(scene.salient)
    write_table(MANIFEST, {"image_id": ids, "path": paths, "split": splits,
                           "labels": np.stack(labels).astype(np.int8), "salient": np.array(salient, np.int32)},
                list(cfg.classes), extra_metadata={"root": str(IMAGES_DIR), "source": "embedded"})
    print(f"prepared {n_train} train + {n_test} test scenes, {len(cfg.classes)} classes → {MANIFEST}")


def write_imported(data: ImportedDataset, fmt: str) -> None:
    with atomic_path(IMAGES_DIR) as tmp:
        tmp.mkdir()
        # Size and mtime of every image: `score` depends on this file, so an image edited in place
        # reruns it after `dvc repro -f prepare`, without DVC hashing a dataset outside the project.
        stats = "".join(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n"
                        for rel in data.paths for st in [Path(data.root, rel).stat()])
        (tmp / "SOURCE.txt").write_text(f"images are read in place from {data.root}\n{stats}")
    write_table(MANIFEST, {"image_id": data.image_ids, "path": data.paths, "split": data.splits,
                           "labels": data.labels}, data.classes,
                extra_metadata={"root": str(data.root), "source": fmt})
    n_test = sum(s == "test" for s in data.splits)
    print(f"imported {len(data.paths) - n_test} train + {n_test} test images, {len(data.classes)} classes "
          f"from {data.root} ({fmt}) → {MANIFEST}")
    if data.skipped:
        print(f"skipped {len(data.skipped)} listed image(s) absent on disk, e.g. {data.skipped[:3]}")
