"""`mlpl predict DIR`: run the standalone student on every image of a folder → a Parquet table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.images import list_images
from pipeline.logits import sigmoid
from pipeline.storage import write_table
from pipeline.student import load_student, predict_paths


def run(images_dir: Path, out: Path, model_path: Path, batch_size: int, num_workers: int) -> None:
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: student checkpoint not found (run `dvc repro` first)")
    paths = list_images(images_dir)
    if not paths:
        raise FileNotFoundError(f"{images_dir}: no image files found")
    module, classes, size = load_student(model_path)
    with tqdm(total=len(paths), desc="predict", unit="img") as bar:
        logits = predict_paths(module, size, paths, batch_size, num_workers, on_batch=bar.update)
    probs = sigmoid(logits)
    rel = [str(p.relative_to(images_dir)) for p in paths]
    write_table(out, {"image_id": rel, "path": rel, "logits": logits.astype(np.float32),
                      "probs": probs.astype(np.float32)}, classes, extra_metadata={"model": str(model_path)})
    print(f"predicted {len(paths)} images → {out}")
