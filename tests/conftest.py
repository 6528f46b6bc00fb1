import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
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


def pytest_collection_modifyitems(items):
    """Run order for `make test`'s two workers, which take whole files in this order: first the file that
    builds the session's tiny project (`tiny_build`; also the longest), then the files that never need it, then
    the others that copy it, so that the other worker is not left waiting for the build."""
    def rank(item) -> int:
        if item.path.name == "test_e2e_dvc.py":
            return 0
        return 2 if "tiny_build" in getattr(item, "fixturenames", ()) else 1

    items.sort(key=rank)  # stable: pytest's order within each rank
