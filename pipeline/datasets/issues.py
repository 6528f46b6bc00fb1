"""Issue reports: one `Issue` per row excluded, image converted or fact noted while importing a dataset.

The kinds and actions are stable names (README-documented; add, never rename): they are the `kind` and
`action` columns of reports/data_issues.parquet, written by `prepare` (and `predict`) on every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from pipeline.images import IMAGE_FAULTS

# Stable names of reports/data_issues.parquet `kind` (README-documented; add, never rename).
ROW_FAULTS = ("path_escapes_root", "duplicate_id", "unknown_class", "bad_annotation", "absent")
ISSUE_KINDS = ROW_FAULTS + IMAGE_FAULTS + ("orphan_annotation", "converted_mode", "wrong_extension", "no_positives",
                                          "small_image")
ACTIONS = ("excluded", "converted", "kept")
ISSUE_SCHEMA = pa.schema([("image_id", pa.string()), ("path", pa.string()), ("kind", pa.string()),
                          ("detail", pa.string()), ("action", pa.string())])


@dataclass(frozen=True)
class Issue:
    """One row of reports/data_issues.parquet. image_id and path are empty for dataset-level issues."""

    image_id: str
    path: str
    kind: str  # one of ISSUE_KINDS
    detail: str
    action: str  # excluded | converted | kept


def issues_table(issues: Sequence[Issue]) -> pa.Table:
    """The issues as reports/data_issues.parquet's table (the schema even when there are none)."""
    return pa.Table.from_pylist([vars(i) for i in issues], schema=ISSUE_SCHEMA)


def issue_summary(issues: Sequence[Issue]) -> str:
    """Counts per action, then per kind, e.g. `2 excluded, 1 converted (absent 1, …)`; `none` without issues."""
    if not issues:
        return "none"
    by_action = {a: sum(i.action == a for i in issues) for a in ACTIONS}
    by_kind = {k: n for k in ISSUE_KINDS if (n := sum(i.kind == k for i in issues))}  # stable order
    return (", ".join(f"{n} {a}" for a, n in by_action.items() if n) + " ("
            + ", ".join(f"{k} {n}" for k, n in by_kind.items()) + ")")
