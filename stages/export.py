"""`mlpl export`: a label table's pseudo labels as CSV (the folder-dataset format) or COCO-style JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pipeline.export import coco_dict, csv_rows, export_format, unlabelled
from pipeline.images import image_size_of
from pipeline.storage import Table, atomic_path, manifest_paths, manifest_rows
from stages.common import LABEL_COLUMNS, MANIFEST, Params


def run(out: Path, source: str, fmt: str | None, threshold: float, params_file: Path = Path("params.yaml")) -> None:
    if source not in LABEL_COLUMNS:  # any rung of the ladder; refined is the pipeline's final train labels
        raise ValueError(f"--labels must be one of {list(LABEL_COLUMNS)}, got {source!r}")
    fmt = export_format(str(out), fmt)
    path, column = LABEL_COLUMNS[source]
    table, manifest = Table(path), Table(MANIFEST)
    rows = manifest_rows(manifest, table.column("image_id"))
    paths = [str(p) for p in manifest.column("path")[rows]]
    logits = table.column(column)
    with atomic_path(out) as tmp:
        if fmt == "csv":
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["image", "labels", "split"])
                writer.writeheader()
                writer.writerows(csv_rows(paths, logits, table.classes, threshold, list(table.column("split"))))
        else:
            sizes = [image_size_of(p) for p in manifest_paths(manifest)[rows]]
            info = {"labels": f"{source} ({path}, column {column})",
                    "params_sha256": Params.load(params_file).digest() if params_file.is_file() else None}
            Path(tmp).write_text(json.dumps(coco_dict(paths, logits, table.classes, threshold, sizes, info),
                                            indent=1) + "\n")
    root = manifest.metadata.get("root", ".")
    print(f"exported {len(rows)} images' {source} labels (probability ≥ {threshold}) as {fmt} → {out}; "
          f"image paths are relative to {root}")
    if none := unlabelled(logits, threshold):
        print(f"warning: {none} of {len(rows)} images have no label at probability ≥ {threshold} (empty rows; a "
              "lower --threshold labels more)")
