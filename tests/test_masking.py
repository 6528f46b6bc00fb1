import numpy as np
import pytest

from pipeline.masking import observed_mask


def test_ratio_zero_knows_nothing_and_test_is_never_known():
    is_train = np.array([True] * 80 + [False] * 20)
    assert observed_mask(100, 5, is_train, 0.0, 0).sum() == 0
    full = observed_mask(100, 5, is_train, 1.0, 0)
    assert full[:80].all() and not full[80:].any()


def test_ratio_fraction_seeded_and_nested():
    is_train = np.ones(2000, bool)
    a = observed_mask(2000, 10, is_train, 0.1, 3)
    assert a.mean() == pytest.approx(0.1, abs=0.01)
    assert np.array_equal(a, observed_mask(2000, 10, is_train, 0.1, 3))
    assert not np.array_equal(a, observed_mask(2000, 10, is_train, 0.1, 4))
    b = observed_mask(2000, 10, is_train, 0.3, 3)
    assert (b >= a).all()


def test_bad_ratio():
    with pytest.raises(ValueError, match="ratio"):
        observed_mask(3, 2, np.ones(3, bool), 1.5, 0)
