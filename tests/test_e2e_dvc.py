"""End to end through the real `dvc` CLI in a temporary git repository, on a tiny config."""

import re

import pytest
import yaml

from benchmarks.project import sh, stages_run

pytestmark = pytest.mark.e2e

ALL_STAGES = {"validate", "prepare", "mask", "teacher", "score", "init", "correct", "features", "sew", "ceiling",
              "distill", "evaluate"}


def test_repro_builds_everything(built, project):
    _, repro_stdout = built
    assert stages_run(repro_stdout) == ALL_STAGES
    import json

    m = json.loads((project / "reports" / "metrics.json").read_text())
    assert set(m["labels"]) == {"z0", "tiles", "crops", "cdul", "cut", "corrected", "refined"}
    for table in m["labels"]:
        assert 0 <= m["labels"][table]["map"] <= 1 and m["labels"][table]["inversions"] >= 0
    for model in ("zero_shot", "student", "ceiling", "cdul"):  # cdul: CDUL's estimator on the test images
        assert set(m["test"][model]) >= {"map", "cf1", "of1", "hamming"}
    assert 0 <= m["teacher"]["salient_top1"] <= 1
    assert (project / "reports" / "plots" / "per_class_ap.csv").read_text().startswith("class,")
    assert "<svg" in (project / "reports" / "report.html").read_text()
    info = sh("mlpl info", project).stdout
    assert "data/scores.zarr" in info and "missing" not in info
    assert "labels per image: mean" in info and "co-occurring pairs" in info  # the ground truth's structure
    # from a folder inside the project, as DVC works: the same, after the line naming the project
    assert sh("mlpl info", project / "reports").stdout == f"project: {project.resolve()}\n{info}"


def test_second_repro_does_nothing(project):
    r = sh("dvc repro", project)
    assert stages_run(r.stdout) == set(), r.stdout


def test_the_pseudo_label_path_never_reads_the_true_labels(project):
    """At ratio 0, the manifest's true labels shuffled across train and test rows leave every label table and
    model that the student comes from byte-identical."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    outputs = ["data/labels/initial.parquet", "data/prepared/observed.parquet", "data/labels/corrected.parquet",
               "data/labels/refined.parquet", "data/models/adapter.pt", "data/models/student.pt"]
    before = {o: (project / o).read_bytes() for o in outputs}
    manifest = project / "data" / "prepared" / "manifest.parquet"
    table = pq.read_table(manifest)
    order = np.random.default_rng(0).permutation(table.num_rows)
    column = table.schema.get_field_index("labels")
    shuffled = table.set_column(column, table.schema.field(column), table.column("labels").take(pa.array(order)))
    assert not shuffled.column("labels").equals(table.column("labels"))
    manifest.chmod(0o644)
    pq.write_table(shuffled, manifest)
    sh("mlpl init && mlpl mask && mlpl correct && mlpl sew && mlpl distill", project)
    assert {o: (project / o).read_bytes() for o in outputs} == before


def test_export_names_what_it_exported(project):
    import json

    r = sh("mlpl export --out labels.json --threshold 1.0", project)
    d = json.loads((project / "labels.json").read_text())
    first = d["images"][0]
    assert first["width"] == first["height"] == 32  # the tiny scenes
    assert d["info"]["labels"].startswith("refined") and len(d["info"]["params_sha256"]) == 64
    # the run's params, not params.yaml's as it is now: an edit not yet run changes nothing
    params = (project / "params.yaml").read_text()
    edited = re.sub(r"^ratio: .*$", "ratio: 0.5", params, count=1, flags=re.M)
    assert edited != params
    (project / "params.yaml").write_text(edited)
    try:
        sh("mlpl export --out again.json --threshold 1.0", project)
    finally:
        (project / "params.yaml").write_text(params)
    assert json.loads((project / "again.json").read_text())["info"] == d["info"]
    assert d["categories"][0]["supercategory"] == "object"
    empty = len(d["images"]) - len({a["image_id"] for a in d["annotations"]})
    assert f"warning: {empty} of {len(d['images'])} images have no label" in r.stdout
    bad = sh("mlpl export --out labels.csv --format coco", project, check=False)
    assert bad.returncode == 2 and "the suffix .csv is for --format csv" in bad.stderr


def _refused_repro(project, edit, env_prefix: str = "") -> str:
    """Edit params.yaml, run `dvc repro`, check that validation refused it alone; restore params.yaml."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    edit(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = sh(f"{env_prefix}dvc repro", project, check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "invalid params, nothing was run" in out
    assert stages_run(r.stdout) == {"validate"}
    sh("git checkout -q -- params.yaml", project)
    return out


def test_invalid_params_fail_before_anything_is_touched(project):
    def snapshot():
        return {p.relative_to(project): p.read_bytes() for root in ("data", ".dvc/cache")
                for p in sorted((project / root).rglob("*")) if p.is_file()}

    before = snapshot()

    def bad(params):
        params["ratio"] = 1.5
        params["score"]["crop_area"] = [0.2, 1.5]
        params["sew"]["max_overlays"] = -1
        params["teacher"]["model"] = "RN5O"

    out = _refused_repro(project, bad)
    assert "'ratio' must be in [0.0, 1.0], got 1.5" in out
    assert "'score.crop_area' must be [low, high] within (0.0, 1.0], got [0.2, 1.5]" in out
    assert "'sew.max_overlays' must be >= 0, got -1" in out and "'teacher.model' must be an open_clip model" in out
    assert snapshot() == before  # no output deleted, nothing new in the cache

    # weights that do not resolve, a typo'd key and two bad keys of one section: all at once, before DVC
    # deletes data/teacher (it would, were `teacher` to start)
    def also_bad(params):
        params["teacher"]["pretrained"] = "openai"
        params["score"]["crop_size"] = 5
        params["sew"]["overlay_prob"], params["sew"]["overlay_side"] = 2.0, -1.0

    out = _refused_repro(project, also_bad, f"HF_HOME={project / 'empty-hf'} HF_HUB_OFFLINE=1 ")
    assert "'teacher.pretrained' does not resolve offline" in out
    assert "unknown key 'score.crop_size' (did you mean 'score.crops'?)" in out
    assert "'sew.overlay_prob' must be in [0.0, 1.0), got 2.0" in out
    assert "'sew.overlay_side' must be in (0.0, 1.0], got -1.0" in out
    assert snapshot() == before
    # the papers' settings train on known labels alone: at ratio 0 there are none
    out = _refused_repro(project, lambda params: params.update(unknown="ignore"))
    assert "unknown: ignore trains on the known labels alone, and ratio: 0 knows none" in out
    out = _refused_repro(project, lambda params: params.update(unknown="negative", known="single_positive"))
    assert "unknown: negative trains on the known labels alone, and ratio: 0 knows none" in out
    out = _refused_repro(project, lambda params: params.update(known="uncertain"))
    assert "known: uncertain answers the budget share of the train entries, and budget: 0 is none" in out
    assert snapshot() == before
    assert stages_run(sh("dvc repro", project).stdout) == set()


def test_report_and_dvc_plots_render_offline_in_a_browser(project, tmp_path):
    """The report and `dvc plots show` (through the project's offline page template) render their charts
    in headless Chromium with every network request refused."""
    from tests.browser import rendered_dom

    report = rendered_dom(project / "reports" / "report.html")
    assert report.count("<svg") >= 3 and "Most fixed" in report and "<dt>gap closure</dt>" in report

    sh(f"dvc plots show -o {tmp_path / 'plots'}", project)
    page = tmp_path / "plots" / "index.html"
    assert "cdn.jsdelivr" not in page.read_text()
    dom = rendered_dom(page)
    charts = dom.count('class="marks"')  # vega-embed's rendered svg, one per plot
    assert charts == 3, dom[:3000]
    # stage order kept, readable axis titles, one colour per model
    for text in ("Pseudo-label ladder", "train mAP", "Micro-averaged precision-recall"):
        assert text in page.read_text()
    # the ladder's axis starts near its lowest rung, not at 0, so a step of 0.01 shows; AP stays within [0, 1]
    ladder = [float(row.split(",")[1]) for row in (project / "reports/plots/ladder.csv").read_text().split()[1:]]
    ticks = _axis_ticks(dom, "ladder")
    assert min(ladder) - 0.1 < ticks[0] <= min(ladder) and max(ladder) <= ticks[-1] <= 1.0, (ticks, ladder)
    assert ticks[1] - ticks[0] <= 0.05, ticks  # a tick every 0.05 or closer
    ap = _axis_ticks(dom, "per_class_ap")
    assert 0 <= ap[0] and ap[-1] <= 1.0, ap


def _axis_ticks(dom: str, plot: str) -> list[float]:
    """The numeric axis labels of one `dvc plots show` chart (rendered as svg by the project's templates)."""
    chart = dom[dom.index(f'id="{plot}"'):]
    chart = chart[:chart.index("</svg>", chart.index('class="marks"'))]
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", "".join(re.findall(r'role-axis-label"[^>]*>(.*?)</g>', chart)))
    return [float(t) for t in labels if re.fullmatch(r"-?[0-9.]+", t)]


def _documented(doc: str) -> dict[str, list[tuple[list[str], bool]]]:
    """docs/outputs.md: output path → rows of (names in the first cell, conditional), for the headings that
    name a file of the project; reports/plots/ rows give their file and its columns."""
    out: dict[str, list] = {}
    current = None
    for line in doc.splitlines():
        m = re.match(r"^### `((?:data|reports)/[^`]+)`", line)
        if m:
            current = out.setdefault(m.group(1), [])
            continue
        if line.startswith("#"):  # any other heading ends the section
            current = None
        if current is not None and line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            names = re.findall(r"`([^`]+)`", cells[0])
            extra = re.findall(r"`([^`]+)`", cells[1]) if names[0].endswith(".csv") else []
            current.append((names + extra, "*(only with" in line))
    return out


def test_outputs_match_docs(project):
    """Every column, array, metric and plot file docs/outputs.md lists exists in a real run, and vice versa."""
    import json

    import pyarrow.parquet as pq
    import zarr

    from benchmarks.project import ROOT

    documented = _documented((ROOT / "docs" / "outputs.md").read_text())
    assert {"data/prepared/manifest.parquet", "data/labels/refined.parquet", "data/scores.zarr",
            "reports/metrics.json", "reports/plots/", "reports/figures/"} <= set(documented)
    for rel, rows in documented.items():
        listed = {n for names, _ in rows for n in names}
        required = {n for names, conditional in rows if not conditional for n in names}
        path = project / rel
        if rel.endswith(".parquet"):
            actual = set(pq.read_schema(path).names)
        elif rel.endswith(".zarr"):
            actual = {name for name, _ in zarr.open_group(str(path), mode="r").arrays()}
        elif rel.endswith(".json"):  # keys with <rung>/<model> placeholders
            flat = _flat_keys(json.loads(path.read_text()))
            unlisted = [k for k in flat if not any(_key_pattern(n).match(k) for n in listed)]
            missing = [n for n in required if not any(_key_pattern(n).match(k) for k in flat)]
            assert not unlisted and not missing, (unlisted, missing)
            continue
        elif rel == "reports/figures/":  # each chart a standalone SVG document
            from xml.etree import ElementTree

            assert {n for names, _ in rows for n in names} == {p.name for p in path.glob("*")}
            for name in listed:
                assert ElementTree.parse(path / name).getroot().tag == "{http://www.w3.org/2000/svg}svg", name
            continue
        else:  # reports/plots/: each file with exactly its columns
            files = {names[0]: names[1:] for names, _ in rows}
            assert set(files) == {p.name for p in path.glob("*.csv")}, sorted(p.name for p in path.glob("*.csv"))
            for name, columns in files.items():
                assert (path / name).read_text().splitlines()[0].split(",") == columns, name
            continue
        # a documented name may hold a placeholder (`overlay_<s>`: one array per overlay side)
        missing = [n for n in required if not any(_key_pattern(n).match(a) for a in actual)]
        unlisted = [a for a in actual if not any(_key_pattern(n).match(a) for n in listed)]
        assert not missing and not unlisted, (rel, sorted(missing), sorted(unlisted))


def _key_pattern(documented: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"<[^>]+>", "[^.]+", re.escape(documented)) + "$")


def _flat_keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out
