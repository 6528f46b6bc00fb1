import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(2)

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
