"""`mlpl info`: what the pipeline has produced so far, for a person at a terminal."""

from __future__ import annotations

import json

from pipeline.label_stats import label_statistics, statistics_lines
from pipeline.storage import read_json
from stages.common import (
    ADAPTER,
    CEILING,
    CORRECTED,
    FEATURES,
    INITIAL,
    MANIFEST,
    METRICS,
    OBSERVED,
    REFINED,
    REPORT,
    SCORES,
    SCORES_WORK,
    STUDENT,
    TEACHER_DESCRIPTOR,
)


def _size(path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _files(path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file()) if path.is_dir() else int(path.exists())


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run() -> None:
    from pipeline.storage import Table

    if MANIFEST.exists():
        m = Table(MANIFEST)
        split = m.column("split")
        print(f"dataset   {m.metadata.get('source', '?')}: {len(m)} images "
              f"({int((split == 'train').sum())} train, {int((split == 'test').sum())} test), "
              f"{len(m.classes)} classes: {', '.join(m.classes)}; ground truth: {'yes' if m.has('labels') else 'no'}")
        if m.has("labels"):  # what partial-label methods can exploit: the tail, clutter, co-occurrence
            train = m.column("labels")[split == "train"]
            for line in statistics_lines(label_statistics(train, list(m.classes))):
                print(f"  train   {line}")
    else:
        print("dataset   not prepared (run `dvc repro` or `mlpl prepare`)")
    if TEACHER_DESCRIPTOR.exists():
        d = read_json(TEACHER_DESCRIPTOR)
        print(f"teacher   {d['model']} / {d['pretrained']} ({d['found_in']}), weights {d['weights']}, "
              f"sha256 {d['sha256'][:16]}…")
    else:
        print("teacher   not resolved")
    print("artifacts")
    for path in (MANIFEST, OBSERVED, SCORES, INITIAL, CORRECTED, FEATURES, REFINED, ADAPTER, CEILING, STUDENT,
                 METRICS, REPORT):
        state = f"{_human(_size(path)):>10}  {_files(path):>5} file(s)" if path.exists() else "   missing"
        print(f"  {str(path):36s}{state}")
    if SCORES_WORK.exists():
        done = len(list((SCORES_WORK / "done").glob("shard-*")))
        print(f"  {str(SCORES_WORK):36s}partial scoring, {done} shard(s) done (rerun `mlpl score`)")
    if METRICS.exists():
        metrics = json.loads(METRICS.read_text())
        if "test" in metrics:
            print("results   " + ", ".join(f"test.{k}.map={v['map']:.3f}" for k, v in metrics["test"].items()))
