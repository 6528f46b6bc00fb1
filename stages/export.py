"""`mlpl export`: a label table's pseudo labels as CSV (the folder-dataset format) or COCO-style JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from pipeline.export import FORMATS, coco_dict, csv_rows
from pipeline.storage import DataError, Table, atomic_path
from stages.common import LABEL_COLUMNS, MANIFEST


def run(out: Path, source: str, fmt: str, threshold: float) -> None:
    if source not in LABEL_COLUMNS:  # any rung of the ladder; refined is the pipeline's final train labels
        raise ValueError(f"--labels must be one of {list(LABEL_COLUMNS)}, got {source!r}")
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    path, column = LABEL_COLUMNS[source]
    table, manifest = Table(path), Table(MANIFEST)
    row_of = {image_id: r for r, image_id in enumerate(manifest.column("image_id"))}
    missing = [i for i in table.column("image_id") if i not in row_of]
    if missing:
        raise DataError(f"{path}: {len(missing)} images not in {MANIFEST} (e.g. {missing[0]}); rerun `dvc repro`")
    rows = np.array([row_of[i] for i in table.column("image_id")])
    paths = [str(p) for p in manifest.column("path")[rows]]
    logits = table.column(column)
    with atomic_path(out) as tmp:
        if fmt == "csv":
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["image", "labels", "split"])
                writer.writeheader()
                writer.writerows(csv_rows(paths, logits, table.classes, threshold, list(table.column("split"))))
        else:
            Path(tmp).write_text(json.dumps(coco_dict(paths, logits, table.classes, threshold), indent=1) + "\n")
    root = manifest.metadata.get("root", ".")
    print(f"exported {len(rows)} images' {source} labels (probability ≥ {threshold}) as {fmt} → {out}; "
          f"image paths are relative to {root}")
