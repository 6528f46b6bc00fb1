import numpy as np
import pytest
import torch

from pipeline.scenes import SceneConfig
from pipeline.toy_teacher import (
    TeacherTraining,
    ViewSampling,
    make_scene_pool,
    multi_positive_contrastive_loss,
    sample_views,
    train_toy_teacher,
)


def test_duplicate_captions_are_positives():
    same = torch.tensor([0, 0, 1])  # images 0 and 1 share a caption
    together = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]]), dim=-1)
    apart = torch.eye(3)
    scale = torch.tensor(10.0)

    def loss(emb, ids):
        return multi_positive_contrastive_loss(emb, emb, ids, scale)

    # Our loss prefers duplicates embedded together; plain CLIP (all captions distinct) pushes them apart.
    assert loss(together, same) < loss(apart, same) - 1.0
    assert loss(apart, torch.arange(3)) < 0.5 * loss(together, torch.arange(3))


def test_views_are_captioned_by_their_dominant_object():
    cfg = SceneConfig(image_size=32, n_classes=4)
    pool = make_scene_pool(20, cfg, seed=0)
    rng = np.random.default_rng(0)
    views, cls = sample_views(rng, pool, 64, 32, ViewSampling(crop_prob=0.0, flip=False))
    firsts = {c[0] for c in pool.object_classes}
    assert views.shape == (64, 3, 32, 32) and set(cls.tolist()) <= firsts
    views, cls = sample_views(rng, pool, 64, 32, ViewSampling(crop_prob=1.0))
    present = set().union(*map(set, pool.object_classes))
    assert set(cls.tolist()) <= present


@pytest.mark.e2e
def test_training_lowers_the_loss(tiny_tokenizer):
    from pipeline.clip import create_model

    torch.manual_seed(0)
    model = create_model("mlpl-tiny-rn")
    cfg = SceneConfig(image_size=32, n_classes=4)
    pool = make_scene_pool(64, cfg, seed=0)
    losses = []
    train_toy_teacher(model, tiny_tokenizer, cfg.classes, pool, TeacherTraining(steps=30, batch_size=32, lr=3e-3,
                                                                                  warmup=5), ViewSampling(),
                      on_step=lambda s, loss: losses.append(loss))
    assert not model.training
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_impossible_crops_fall_back_to_full_views():
    pool = make_scene_pool(4, SceneConfig(image_size=32, n_classes=4), seed=0)
    views, cls = sample_views(np.random.default_rng(0), pool, 8, 32, ViewSampling(crop_prob=1.0, min_fraction=1.1))
    assert len(cls) == 8 and set(cls.tolist()) <= {c[0] for c in pool.object_classes}
