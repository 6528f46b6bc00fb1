import os

import pytest
import torch

from benchmarks.project import sh

os.environ.setdefault("TQDM_DISABLE", "1")
# Every `dvc` command ends by starting a detached `dvc daemon analytics` process (~0.8 s of CPU, for a usage
# report the offline test machines cannot deliver) on the cores the tests share; the tests' dvc commands
# inherit this (the run times with and without it: README, Development).
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Under pytest-xdist (`make test`: two workers on two cores) each worker, and every process it starts (the
# tests' dvc/mlpl commands inherit the environment), computes on one thread: two threads each oversubscribe
# the cores and cost ~10 % of the run. Alone, a test run keeps two.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))

TINY_MODEL = "mlpl-tiny-rn"  # 32 px ModifiedResNet + 1-layer text tower, registered by pipeline.clip


def make_rule(name: str, unknown: str = "pseudo"):
    """The rule method `name` (pipeline.methods); LL-R rejecting fast enough to act within a tiny run."""
    from pipeline.methods import METHODS

    return METHODS[name](unknown=unknown, **({"delta": 50.0} if name == "large_loss" else {}))


@pytest.fixture(scope="session")
def tiny_model():
    from pipeline.clip import create_model

    torch.manual_seed(0)
    return create_model(TINY_MODEL)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from pipeline.clip import tokenizer_for

    return tokenizer_for(TINY_MODEL)


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    """The tiny project built once per test session and shared by the xdist workers (under xdist each worker's
    base temp dir is a child of the session's): end-to-end modules copy it, or its cache, rather than train the
    teacher and score the images again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    from tests.dvcproject import build_once

    return build_once(root / "tiny-build")


@pytest.fixture(scope="module")
def built(tiny_build, tmp_path_factory):
    """The end-to-end module's copy of the tiny project reproduced from scratch and committed (dvc.lock with
    it): (project, what its `dvc repro` printed). A module that defines a `project` of its own uses that."""
    return tiny_build.copy_to(tmp_path_factory.mktemp("proj") / "p"), tiny_build.repro_stdout


@pytest.fixture
def project(built):
    """The built project back at its committed baseline (params.yaml, dvc.lock and the outputs), whatever an earlier
    test left there (an experiment's params and outputs, a deleted store): every test starts from the same state,
    alone (`pytest -k`) or after the others. `reset --hard`, not `checkout -- .`: DVC autostages the dvc.lock a
    repro writes, and a checkout from the index would keep it."""
    project, _ = built
    sh("git reset -q --hard && dvc checkout -q --force", project)
    return project


# `make test`'s file order (`--dist loadfile --no-loadscope-reorder`: each of the two workers takes whole files,
# the next one in this order whenever it runs low): the file that builds the session's tiny project
# (`tiny_build`) beside one that never needs it, then the longest first (on a 2-core AVX2-only EPYC the
# ablations, kill/resume and experiments files take 3–4 min each, the next four 1–2 min), the rest in pytest's
# order: the short unit-test files fill the end of the run instead of one long file running alone.
FILE_ORDER = ("test_e2e_dvc.py", "test_e2e_teacher.py", "test_e2e_ablations.py", "test_kill_resume.py",
              "test_e2e_experiments.py", "test_torchrun.py", "test_e2e_remote.py", "test_method_gate.py",
              "test_e2e_faults.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return FILE_ORDER.index(name) if name in FILE_ORDER else len(FILE_ORDER)

    items.sort(key=rank)  # stable: pytest's order within a file and among the rest
