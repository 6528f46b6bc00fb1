"""`mlpl merge-answers A B … --out FILE`: several reviewers' answers files as one (the latest answer of an
entry wins, a later file wins a tie), the entries they answered differently listed."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipeline.masking import merge_answers
from pipeline.storage import atomic_path


def run(files: list[Path], out: Path) -> None:
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such answers file")
    merged, conflicts = merge_answers([pq.read_table(path) for path in files])
    with atomic_path(out) as tmp:
        pq.write_table(merged, tmp)
    for c in conflicts:
        print(f"conflict: {c['image_id']} / {c['class']}: answered {c['labels']}, kept {c['kept']} (the latest)")
    print(f"{merged.num_rows} answered entries from {len(files)} files, {len(conflicts)} answered differently → {out}")
