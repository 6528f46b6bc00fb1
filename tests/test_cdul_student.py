"""CDUL's student (pipeline.cdul_student): its label update by hand, its schedule, its training and checkpoint."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cdul_student import CdulTraining, gaussian_psi, gradient_alignment, kl_to_labels, train_cdul_student
from pipeline.images import ResizedImages
from pipeline.models import SmallCNNSpec, load_student, save_checkpoint
from pipeline.student import StudentTraining


def test_the_label_update_by_hand():
    """Eq. 7–8 on one image: u = S⁻¹(y) − ψ(y)·∂KL(ŷ ‖ p)/∂y, with ŷ = y / Σ y."""
    y = torch.tensor([[0.6, 0.2, 0.5]])
    log_p = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0]]), -1)
    s = float(y.sum())
    y_hat, p = (y / s)[0], log_p.exp()[0]
    # ∂/∂y_k of Σ_j ŷ_j (log ŷ_j − log p_j), ŷ_j = y_j / s:
    #   (1/s)·[(log ŷ_k − log p_k + 1) − Σ_j ŷ_j (log ŷ_j − log p_j + 1)]
    inner = torch.log(y_hat) - torch.log(p) + 1
    grad = (inner - (y_hat * inner).sum()) / s
    psi = torch.exp(-0.5 * ((y[0] - 0.5) / 1.0) ** 2) / math.sqrt(2 * math.pi)
    expected = torch.sigmoid(torch.logit(y[0]) - psi * grad)
    assert torch.allclose(gradient_alignment(y, log_p, 1.0)[0], expected, atol=1e-6)
    assert gaussian_psi(torch.tensor(0.5), 1.0).item() == pytest.approx(1 / math.sqrt(2 * math.pi))
    # the class the network believes more than the labels do rises, the one it believes less falls
    moved = gradient_alignment(y, log_p, 1.0)[0] - y[0]
    assert moved[0] > 0 and moved[2] < 0


def test_the_network_loss_is_kl_to_the_normalised_labels():
    log_p = torch.log_softmax(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), -1)
    y = torch.tensor([[0.9, 0.3], [0.5, 0.5]])
    q = y / y.sum(-1, keepdim=True)
    expected = (log_p.exp() * (log_p - q.log())).sum(-1).mean()
    assert kl_to_labels(log_p, y).item() == pytest.approx(expected.item(), rel=1e-4)
    assert kl_to_labels(torch.log(q), y).item() == pytest.approx(0.0, abs=1e-6)


def test_update_epochs_follow_the_reproductions_schedule():
    assert [e for e in range(30) if CdulTraining().updates(e)] == [9, 19, 29]  # epochs 10, 20, 30
    assert [e for e in range(6) if CdulTraining(update_every=2, warmup=3).updates(e)] == [3, 5]


def _images(tmp_path, n=8):
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_training_refines_labels_only_on_update_epochs_and_predicts_a_softmax(tmp_path):
    paths = _images(tmp_path)
    initial = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    training = StudentTraining(epochs=2, batch_size=4, width=4, image_size=16)
    runs = {every: train_cdul_student(ResizedImages(paths, 16), initial, 16, training, CdulTraining(update_every=every))
            for every in (2, 3)}
    start = 1 / (1 + np.exp(-initial))
    assert np.allclose(runs[3][1], start, atol=1e-6)  # no update epoch within two epochs
    assert not np.allclose(runs[2][1], start, atol=1e-3)  # epoch 2 updated every image's labels
    again = train_cdul_student(ResizedImages(paths, 16), initial, 16, training, CdulTraining(update_every=2))
    assert np.array_equal(again[1], runs[2][1])  # seeded
    module = runs[2][0]
    save_checkpoint(tmp_path / "student.pt", SmallCNNSpec(3, 4, 16, ["a", "b", "c"], log_softmax=True), module)
    loaded, classes, size = load_student(tmp_path / "student.pt")
    x = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        out = loaded(x)
        assert torch.allclose(out.exp().sum(-1), torch.ones(2), atol=1e-5)  # log-probabilities over the classes
        assert torch.equal(out, module(x))
    assert (classes, size) == (["a", "b", "c"], 16)
