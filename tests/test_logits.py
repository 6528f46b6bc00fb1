import numpy as np

from pipeline.logits import logit, sigmoid


def test_logit_inverts_sigmoid_in_float64():
    z = np.array([-12.0, -3.5, 0.0, 0.25, 9.0], dtype=np.float32)
    p = sigmoid(z)
    assert p.dtype == np.float64 and p[2] == 0.5
    np.testing.assert_allclose(logit(p, eps=1e-9), z, rtol=0, atol=1e-9)


def test_logit_clips_to_eps_so_it_stays_finite():
    out = logit(np.array([0.0, 1.0, 0.5]), eps=1e-4)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, [np.log(1e-4 / (1 - 1e-4)), np.log((1 - 1e-4) / 1e-4), 0.0], rtol=1e-12)
