"""Experiments through the real `dvc` CLI on the tiny project (tests/conftest.py's `project`): which stages the
partial-label methods, the papers' settings and a person's answers rerun, and what they write."""

import csv
import io

import numpy as np
import pytest

from benchmarks.project import sh, stages_run

pytestmark = pytest.mark.e2e


def test_partial_label_methods_together(project):
    """A method of each step at once, on another ratio and draw: the ratio ablation too, which never recomputes
    the scores (nothing upstream of `mask` reruns) and is listed beside the baseline."""
    r = sh("dvc exp run -S ratio=0.5 -S seed=1 -S 'method=[cooccurrence,plmcl,prototypes,hst]' "
           "-S prototypes.threshold=ema -S cooccurrence.threshold=dtl -S hst.modules=both -S hst.start_epoch=0 "
           "-S distill.student=small_cnn -S method_gate.mode=none", project)
    assert stages_run(r.stdout) == {"validate", "mask", "correct", "sew", "distill", "evaluate"}, r.stdout
    rows = list(csv.reader(io.StringIO(sh("dvc exp show --no-pager --csv", project).stdout)))
    assert {row[rows[0].index("ratio")] for row in rows[1:]} == {"0.0", "0.5"} and "test.student.map" in rows[0]
    assert "unknown entries raised" in r.stdout and "hst raised" in r.stdout
    import json

    import pandas as pd
    import zarr

    # what the transfers moved is kept with the labels, and the metrics say how right it was
    corrected = pd.read_parquet(project / "data" / "labels" / "corrected.parquet")
    refined = pd.read_parquet(project / "data" / "labels" / "refined.parquet")  # HST's, train rows in the same order
    raised = np.stack(corrected.raised)[corrected.split.to_numpy() == "train"].astype(bool) | np.stack(refined.raised)
    transfer = json.loads((project / "reports" / "metrics.json").read_text())["transfer"]
    assert transfer["raised"] == int(raised.sum()) and ("raised_right" in transfer) == bool(raised.any())

    bank = zarr.open_group(str(project / "data" / "prototypes.zarr"), mode="r")
    assert bank.attrs["prototypes"] and bank["visual"].shape[:2] == (4, 10) and bank["cooccurrence"].shape == (4, 4)
    assert bank["text"].shape[0] == 4 and bank["similarity_visual"].shape == (36, 4)
    # each transfer's held-out gate (the default) is kept, and `correct` says where its moves survived
    assert bank["prototypes_gate"].shape == (4,) and bank["cooccurrence_gate"].shape == (4,)
    assert "prototypes: moves kept in" in r.stdout and "cooccurrence: moves kept in" in r.stdout


def test_the_papers_settings_rerun_nothing_upstream_of_mask(project):
    sh("dvc exp run -S ratio=0.5 -S method=large_loss correct", project)  # mask and correct into the run cache
    r = sh("dvc exp run -S ratio=0.5 -S method=large_loss -S unknown=negative", project)
    # mask and correct come back from the run cache: `unknown` reaches only the training stages
    assert stages_run(r.stdout) == {"validate", "sew", "distill", "evaluate"}, r.stdout


def test_answers_are_known_labels_and_rerun_from_mask(project):
    """known: answers makes a person's answers (data/answers.parquet) the known entries, their values the
    answers (not the manifest's); only mask and what reads it rerun."""
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.masking import ANSWERS_SCHEMA
    from pipeline.storage import Table

    manifest = Table(project / "data" / "prepared" / "manifest.parquet")
    train = np.flatnonzero(manifest.column("split") == "train")[:3]
    truth = manifest.column("labels")
    now = datetime.datetime(2026, 12, 3, tzinfo=datetime.UTC)
    rows = [{"image_id": manifest.column("image_id")[i], "class": manifest.classes[0], "label": 1 - int(truth[i, 0]),
             "answered_at": now} for i in train]
    pq.write_table(pa.Table.from_pylist(rows, schema=ANSWERS_SCHEMA), project / "data" / "answers.parquet")
    r = sh("dvc exp run -S known=answers", project)
    assert stages_run(r.stdout) == {"validate", "mask", "correct", "sew", "distill", "evaluate"}, r.stdout
    observed = Table(project / "data" / "prepared" / "observed.parquet")
    assert observed.column("known").sum() == 3 and observed.column("known")[train, 0].all()
    assert observed.column("labels")[train, 0].tolist() == [1 - int(truth[i, 0]) for i in train]  # the answers
    corrected = Table(project / "data" / "labels" / "corrected.parquet").column("corrected")
    assert ((corrected[train, 0] > 0) == (observed.column("labels")[train, 0] > 0)).all()  # they win in correct

    # an answer naming a class the dataset lacks stops the run in mask, the first stage that knows the train
    # images, with its row named; the last run's known labels stay in the cache, for `dvc checkout`
    observed_path = project / "data" / "prepared" / "observed.parquet"
    before = observed_path.read_bytes()
    rows.append({**rows[0], "class": "no-such-class"})
    pq.write_table(pa.Table.from_pylist(rows, schema=ANSWERS_SCHEMA), project / "data" / "answers.parquet")
    r = sh("dvc exp run -S known=answers", project, check=False)
    assert r.returncode != 0 and "row 4 names class 'no-such-class'" in r.stdout + r.stderr, r.stdout + r.stderr
    assert stages_run(r.stdout) == {"mask"}, r.stdout
    sh("dvc checkout -q data/prepared/observed.parquet", project)
    assert observed_path.read_bytes() == before


def test_a_simulated_review_knows_the_entries_the_page_shows_first(project):
    """known: uncertain answers the budget share of train entries a review of the initial estimate shows first
    (ranked again with the answers every REVIEW_BATCH), from the ground truth; the initial labels come from
    the cache (mask reads them, nothing upstream reruns)."""
    from pipeline.masking import reviewed_mask
    from pipeline.storage import Table

    # up to mask: that the stages reading it rerun is test_answers_are_known_labels_and_rerun_from_mask's check
    r = sh("dvc exp run -S known=uncertain -S budget=0.05 mask", project)
    assert stages_run(r.stdout) == {"validate", "mask"}, r.stdout
    manifest = Table(project / "data" / "prepared" / "manifest.parquet")
    train, truth = manifest.column("split") == "train", manifest.column("labels")
    observed = Table(project / "data" / "prepared" / "observed.parquet")
    known = observed.column("known").astype(bool)
    n = round(0.05 * train.sum() * truth.shape[1])
    reviewed = reviewed_mask(Table(project / "data" / "labels" / "initial.parquet").column("cut"), train, 0.05, truth)
    assert known.sum() == n and (known == reviewed.astype(bool)).all() and not known[~train].any()
    assert (observed.column("labels")[known] == (truth[known] > 0)).all()


# the partial-label methods and the EM they plug into: none of them is upstream of `correct` or `sew`
METHOD_MODULES = ("hst", "trm", "rules", "plmcl", "g2netpl", "large_loss", "label_distribution", "prototypes",
                  "cooccurrence", "transfer", "method_registry", "methods", "online_transfer", "em", "adaptation")


def test_a_method_edit_never_reencodes_an_image(project):
    """Editing a method module reruns `validate` (it checks every stage's params) and nothing that encodes
    images: prepare, teacher, score, init and the frozen tower's features stay cached."""
    for name in METHOD_MODULES:
        with open(project / "pipeline" / f"{name}.py", "a") as f:
            f.write("# edited\n")
    r = sh("dvc repro features init", project)
    assert stages_run(r.stdout) == {"validate"}, r.stdout
    assert "'features' didn't change" in r.stdout


