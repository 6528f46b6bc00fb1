"""Every module a stage runs is one of its DVC deps, so that a code change reruns exactly the stages it
can affect (and never leaves a cached output computed by older code)."""

import ast
from pathlib import Path

import yaml

from stages.validate import CHECKED

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ("pipeline", "stages")
# Imports inside functions are invisible to the closure below; these are the only ones allowed, and none
# of them changes what a stage writes.
LAZY_IMPORTS_ALLOWED = {
    "stages/cli.py",  # the command line: dispatches to stages, imports them on demand
    "stages/info.py",  # `mlpl info`, not a stage
    "stages/common.py",  # Params.model_name registers our model configs to check a name
    "stages/score.py",  # `python -m stages.score` (torchrun) enters through the command line
}


def module_file(name: str) -> Path | None:
    """The file of module `name`: `a/b.py`, or `a/b/__init__.py` for a subpackage (such as pipeline.scoring;
    the empty `pipeline/__init__.py` and `stages/__init__.py` are not deps)."""
    path = ROOT / (name.replace(".", "/") + ".py")
    if not path.is_file() and "." in name:
        path = ROOT / name.replace(".", "/") / "__init__.py"
    return path if path.is_file() else None


def covered(code: str, deps: set[str]) -> bool:
    """True if `code` is a dep, or lies under a directory dep (a package such as pipeline/scoring)."""
    return code in deps or any(code.startswith(d.rstrip("/") + "/") for d in deps)


def imports(path: Path, top_level: bool = True) -> set[Path]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in (tree.body if top_level else ast.walk(tree)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LOCAL:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] in LOCAL]
        else:
            continue
        found |= {f for f in map(module_file, names) if f is not None}
    return found


def closure(*paths: Path) -> set[str]:
    seen, todo = set(), list(paths)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += imports(path)
    return {str(p.relative_to(ROOT)) for p in seen}


def stage_deps() -> dict[str, set[str]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: set(stage["deps"]) for name, stage in stages.items()}


def test_every_stage_depends_on_all_the_code_it_imports():
    missing = {}
    for name, deps in stage_deps().items():
        code = closure(ROOT / "stages" / f"{name}.py")
        if name == "validate":  # runs every stage's check()
            code |= closure(*(ROOT / "stages" / f"{s}.py" for s in CHECKED))
        if uncovered := {c for c in code if not covered(c, deps)}:
            missing[name] = sorted(uncovered)
    assert not missing, f"dvc.yaml deps lack the modules these stages import: {missing}"


def test_a_stage_depends_on_no_module_it_does_not_run():
    # a stale dep reruns a stage for nothing: a method edit would re-encode every image in `features`
    extra = {}
    for name, deps in stage_deps().items():
        code = closure(ROOT / "stages" / f"{name}.py")
        if name == "validate":
            code |= closure(*(ROOT / "stages" / f"{s}.py" for s in CHECKED))
        if stale := sorted(d for d in deps if d.endswith(".py") and d not in code):
            extra[name] = stale
    assert not extra, f"dvc.yaml deps name modules these stages never import: {extra}"


# the partial-label methods and the EM they plug into
METHOD_MODULES = {f"pipeline/{m}.py" for m in ("hst", "trm", "rules", "transfer", "online_transfer", "em",
                                               "adaptation")}


def test_no_stage_that_encodes_images_runs_a_method():
    for name in ("prepare", "teacher", "score", "init", "features"):
        assert not closure(ROOT / "stages" / f"{name}.py") & METHOD_MODULES, name


def test_stages_run_no_code_the_closure_cannot_see():
    hidden = {}
    for path in sorted((ROOT / "pipeline").rglob("*.py")) + sorted((ROOT / "stages").glob("*.py")):
        rel = str(path.relative_to(ROOT))
        lazy = imports(path, top_level=False) - imports(path)
        if lazy and rel not in LAZY_IMPORTS_ALLOWED:
            hidden[rel] = sorted(str(p.relative_to(ROOT)) for p in lazy)
    assert not hidden, f"imports inside functions hide code from dvc.yaml deps: {hidden}"


def test_the_closure_follows_imports_transitively():
    # stages/sew.py → pipeline/sew.py → pipeline/clip.py: a bug that read only direct imports breaks this
    assert "pipeline/clip.py" in closure(ROOT / "stages" / "sew.py")
    assert "pipeline/logits.py" in closure(ROOT / "stages" / "init.py")  # via pipeline/cut.py
    # into a package's modules: stages/score.py → pipeline/scoring/__init__.py → pipeline/scoring/loop.py
    assert "pipeline/scoring/loop.py" in closure(ROOT / "stages" / "score.py")
    assert covered("pipeline/scoring/loop.py", {"pipeline/scoring"}) and not covered("pipeline/scoring.py",
                                                                                      {"pipeline/scoring"})


def test_dvc_reads_our_yaml_with_the_c_parser_and_the_same_values():
    """Every DVC command reads dvc.yaml, dvc.lock and params.yaml many times (~100 reads per experiment); in
    pure Python each read of dvc.lock takes ~0.46 s. The C parser (ruamel.yaml.clib, a dependency) must be in
    use and must read our files as the pure-Python one does."""
    from ruamel.yaml import YAML

    assert YAML(typ="safe").Parser.__name__ == "CParser"
    for path in ("dvc.yaml", "dvc.lock", "params.yaml", *(str(p) for p in sorted(ROOT.glob("configs/**/*.yaml")))):
        text = (ROOT / path).read_text()
        assert YAML(typ="safe").load(text) == YAML(typ="safe", pure=True).load(text), path
