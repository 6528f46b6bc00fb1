"""`mlpl export`: a label table's pseudo labels as CSV (the folder-dataset format) or COCO-style JSON."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import yaml

from pipeline.export import coco_dict, csv_rows, export_format, locked_params, unlabelled
from pipeline.images import image_size_of
from pipeline.storage import Table, atomic_path, manifest_paths, manifest_rows
from stages.common import LABEL_COLUMNS, MANIFEST, params_digest


def run_params_digest(table: Path, lock_file: Path = Path("dvc.lock")) -> str | None:
    """The digest of the params of the run that wrote `table`, from dvc.lock; None where it does not record this
    table's bytes."""
    if not lock_file.is_file():
        return None
    params = locked_params(yaml.safe_load(lock_file.read_text()) or {}, table.as_posix(),
                           hashlib.md5(table.read_bytes()).hexdigest())
    return None if params is None else params_digest(params)


def run(out: Path, source: str, fmt: str | None, threshold: float) -> None:
    if source not in LABEL_COLUMNS:  # any rung of the ladder; refined is the pipeline's final train labels
        raise ValueError(f"--labels must be one of {list(LABEL_COLUMNS)}, got {source!r}")
    fmt = export_format(str(out), fmt)
    path, column = LABEL_COLUMNS[source]
    table, manifest = Table(path), Table(MANIFEST)
    rows = manifest_rows(manifest, table.column("image_id"))
    paths = [str(p) for p in manifest.column("path")[rows]]
    logits = table.column(column)
    digest = run_params_digest(path) if fmt == "coco" else None
    with atomic_path(out) as tmp:
        if fmt == "csv":
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["image", "labels", "split"])
                writer.writeheader()
                writer.writerows(csv_rows(paths, logits, table.classes, threshold, list(table.column("split"))))
        else:
            sizes = [image_size_of(p) for p in manifest_paths(manifest)[rows]]
            info = {"labels": f"{source} ({path}, column {column})", "params_sha256": digest}
            Path(tmp).write_text(json.dumps(coco_dict(paths, logits, table.classes, threshold, sizes, info),
                                            indent=1) + "\n")
    root = manifest.metadata.get("root", ".")
    print(f"exported {len(rows)} images' {source} labels (probability ≥ {threshold}) as {fmt} → {out}; "
          f"image paths are relative to {root}")
    if fmt == "coco" and digest is None:
        print(f"warning: dvc.lock does not record {path} as it is now (written outside `dvc repro`?): the params "
              "that made it are unknown, so info.params_sha256 is null")
    if none := unlabelled(logits, threshold):
        print(f"warning: {none} of {len(rows)} images have no label at probability ≥ {threshold} (empty rows; a "
              "lower --threshold labels more)")
