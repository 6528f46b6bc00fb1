"""Composites in feature space: the stored tower features and the dataset that pastes them."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import clip
from pipeline.adapter import Adapter, AdapterConfig, FrozenTowerClassifier, adapter_for
from pipeline.em import e_step, predict_hosts, train_adapter_em
from pipeline.features import (
    GRID,
    encode_grid,
    encode_images,
    overlay_cells,
    overlay_key,
    overlay_sizes,
    read_feature_store,
    read_test_grid,
    write_feature_store,
)
from pipeline.images import decode_image, resize_u8
from pipeline.sew import FeatureSewDataset, SewDataset, SewSettings, sew_features
from pipeline.storage import DataError
from pipeline.student import predict_grid, predict_paths


def _noise_images(root, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def scene_paths(tmp_path_factory):
    return _noise_images(tmp_path_factory.mktemp("features"), 6, 0)


def test_overlay_side_in_cells_follows_q_over_sqrt_n():
    # a 6×6 grid (the toy tower at 192 px): one overlay takes half the side, two or three a third
    assert [overlay_cells(6, 0.5, n) for n in (1, 2, 3)] == [3, 2, 2]
    assert overlay_sizes(6, 0.5, 3) == (2, 3)
    assert overlay_sizes(6, 0.5, 0) == ()
    assert overlay_cells(2, 0.1, 3) == 1  # never less than one cell
    assert overlay_cells(4, 1.0, 1) == 4


def test_encoded_features_are_the_towers_at_the_host_and_overlay_sizes(tiny_model, scene_paths):
    arrays = encode_images(tiny_model.visual, clip.normalizer_of(tiny_model), scene_paths, 128, 0.5, 2,
                           batch_size=4)  # grid 4, stride 32: overlays of 2 cells (n = 1) and 1 cell (n = 2)
    assert set(arrays) == {GRID, overlay_key(1), overlay_key(2)}
    mean, std = clip.normalizer_of(tiny_model)
    image = decode_image(scene_paths[5])
    with torch.inference_mode():
        for key, pixels in ((GRID, 128), (overlay_key(2), 64), (overlay_key(1), 32)):
            inputs = clip.normalize_u8(resize_u8(image, pixels)[None], mean, std)
            expected = clip.grid_features(tiny_model.visual, inputs)
            assert arrays[key].dtype == np.float16 and arrays[key].shape[1:] == tuple(expected.shape[1:])
            assert np.allclose(arrays[key][5], expected[0].numpy(), rtol=2e-3, atol=2e-3)


def test_sew_features_copies_each_overlay_over_whole_cells():
    host = torch.zeros(2, 6, 6)
    overlay = torch.arange(18.0).view(2, 3, 3) + 1
    out, rects = sew_features(host, [overlay], np.random.default_rng(0))
    (x0, y0, x1, y1), = rects
    x, y = round(x0 * 6), round(y0 * 6)
    assert (x1 - x0, y1 - y0) == (0.5, 0.5)
    assert torch.equal(out[:, y:y + 3, x:x + 3], overlay)
    out[:, y:y + 3, x:x + 3] = 0
    assert torch.equal(out, host)  # nothing else changed, and the host itself is untouched
    assert torch.equal(host, torch.zeros(2, 6, 6))
    # with tries, the window goes where it covers least of the host's likely objects
    avoid = np.array([[0.0, 0.0, 0.5, 1.0]])  # an object on the left half
    _, rects = sew_features(host, [overlay], np.random.default_rng(1), avoid, np.ones(1), tries=16)
    assert rects[0][0] == 0.5  # flush right: covers none of it


def test_feature_dataset_draws_the_same_overlays_and_pastes_their_features(tiny_model, scene_paths):
    s = SewSettings(overlay_prob=0.9, max_overlays=2, seed=3, overlay_side=0.5)
    arrays = encode_images(tiny_model.visual, clip.normalizer_of(tiny_model), scene_paths, 128, 0.5, 2)
    pool = np.stack([np.arange(6), np.arange(6) % 3], axis=1)
    pixels, features = SewDataset(scene_paths, 128, pool, s), FeatureSewDataset(arrays, pool, s)
    assert features.encoded and not pixels.encoded
    composed = 0
    for epoch in (0, 1):
        pixels.epoch = features.epoch = epoch
        for i in range(6):
            _, p_src, p_cls, _ = pixels[i]
            grid, f_src, f_cls, _ = features[i]
            assert torch.equal(p_src, f_src) and torch.equal(p_cls, f_cls)  # the same draws per (seed, epoch, i)
            n = int((f_src[1:] >= 0).sum())
            assert grid.shape == (512, 4, 4) and grid.dtype == torch.float32
            if n:
                composed += 1
                cells = overlay_cells(4, 0.5, n)
                windows = grid.unfold(1, cells, 1).unfold(2, cells, 1)  # [D, 4-s+1, 4-s+1, s, s]
                own = torch.from_numpy(arrays[overlay_key(cells)][int(f_src[1])]).float()
                assert (windows == own[:, None, None]).all(0).any()  # its features lie on some window
            else:
                assert torch.equal(grid, torch.from_numpy(arrays[GRID][i]).float())
    assert composed >= 4


def test_em_on_features_needs_no_tower(tiny_model, scene_paths):
    arrays = encode_images(tiny_model.visual, clip.normalizer_of(tiny_model), scene_paths, 64, 0.5, 1)
    s = SewSettings(epochs=2, batch_size=3, max_overlays=1, overlay_prob=0.5, e_weight=0.5)
    ds = FeatureSewDataset(arrays, np.arange(6), s)
    torch.manual_seed(0)
    adapter = Adapter(AdapterConfig(in_dim=512, n_classes=3, grid=(2, 2), hidden=16, heads=2))
    z = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    frozen = np.zeros_like(z, bool)
    frozen[0] = True
    refined = train_adapter_em(None, None, adapter, ds, z, frozen, s)
    p = predict_hosts(None, None, adapter, ds, 4)
    assert np.allclose(refined[1:], e_step(z, p, 0.5)[1:], atol=1e-5) and np.array_equal(refined[0], z[0])
    # the adapter's logits on a stored grid are its logits on the image through the tower
    mean, std = clip.normalizer_of(tiny_model)
    with torch.inference_mode():
        direct = adapter(clip.grid_features(tiny_model.visual, clip.normalize_u8(
            resize_u8(decode_image(scene_paths[2]), 64)[None], mean, std)))
    assert np.allclose(p[2], direct[0].numpy(), atol=1e-2)


def test_feature_store_refuses_what_it_was_not_encoded_for(tiny_model, scene_paths, tmp_path):
    arrays = encode_images(tiny_model.visual, clip.normalizer_of(tiny_model), scene_paths, 128, 0.5, 1)
    ids = [f"img{i}" for i in range(6)]
    write_feature_store(tmp_path / "f.zarr", ids, arrays, {"image_size": 128})
    back = read_feature_store(tmp_path / "f.zarr", ids, 128, 0.5, 1)
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)
    with pytest.raises(DataError, match="other images"):
        read_feature_store(tmp_path / "f.zarr", ids[::-1], 128, 0.5, 1)
    with pytest.raises(DataError, match="192 px|at 128 px"):
        read_feature_store(tmp_path / "f.zarr", ids, 192, 0.5, 1)
    with pytest.raises(DataError, match="lacks"):
        read_feature_store(tmp_path / "f.zarr", ids, 128, 0.5, 2)  # two overlays take 1 cell: not encoded


def test_the_stored_test_grid_gives_the_tower_paths_logits_to_the_bit(tiny_model, tmp_path):
    """evaluate predicts frozen-tower models from the stored test grid: the same logits as running the tower
    over the images (two batches here), so no experiment needs the tower; a store of other images serves none."""
    paths = _noise_images(tmp_path, 70, 1)
    ids = [f"t{i}" for i in range(70)]
    torch.manual_seed(0)
    adapters = {name: adapter_for(tiny_model, n, 64, hidden=16, heads=2).eval() for name, n in (("a", 3), ("b", 2))}
    grid = encode_grid(tiny_model.visual, clip.normalizer_of(tiny_model), paths, 64)
    assert grid.dtype == np.float32 and grid.shape[0] == 70
    arrays = encode_images(tiny_model.visual, clip.normalizer_of(tiny_model), paths[:6], 64, 0.5, 1)
    write_feature_store(tmp_path / "f.zarr", ids[:6], arrays, {"image_size": 64, "backbone": {"sha256": "s"}},
                        test=(ids, grid))
    stored = read_test_grid(tmp_path / "f.zarr", ids)
    assert (stored.backbone_sha256, stored.image_size) == ("s", 64) and np.array_equal(stored.grid[:], grid)
    from_grid = predict_grid(adapters, stored.grid)
    for name, adapter in adapters.items():
        assert np.array_equal(from_grid[name], predict_paths(FrozenTowerClassifier(tiny_model, adapter, 64), 64, paths))
    assert read_test_grid(tmp_path / "f.zarr", ids[::-1]) is None  # other images (or order): run the tower
    write_feature_store(tmp_path / "train_only.zarr", ids[:6], arrays, {"image_size": 64})  # no test images stored
    assert read_test_grid(tmp_path / "train_only.zarr", ids) is None


def test_evaluate_predicts_from_the_stored_grid_without_building_a_tower(tiny_model, tmp_path, monkeypatch):
    """evaluate's checkpoints served by the stored test grid load their adapter alone: no tower is built (nor
    open_clip imported) in an experiment that changes only labels or the adapter; another tower's are built."""
    import pipeline.models as models
    from stages.evaluate import predict_test

    paths = _noise_images(tmp_path, 5, 2)
    ids = [f"t{i}" for i in range(5)]
    torch.manual_seed(0)
    adapter = adapter_for(tiny_model, 3, 64, hidden=16, heads=2).eval()
    grid = encode_grid(tiny_model.visual, clip.normalizer_of(tiny_model), paths, 64)
    monkeypatch.chdir(tmp_path)
    arrays = encode_images(tiny_model.visual, clip.normalizer_of(tiny_model), paths[:2], 64, 0.5, 1)
    write_feature_store("data/features.zarr", ids[:2], arrays, {"image_size": 64, "backbone": {"sha256": "s"}},
                        test=(ids, grid))
    spec = models.FrozenTowerSpec("mlpl-tiny-rn", "s", adapter.cfg, 64, ["a", "b", "c"])
    models.save_checkpoint(tmp_path / "student.pt", spec, FrozenTowerClassifier(tiny_model, adapter, 64))
    other = models.FrozenTowerSpec("mlpl-tiny-rn", "another tower", adapter.cfg, 64, ["a", "b", "c"])
    models.save_checkpoint(tmp_path / "other.pt", other, FrozenTowerClassifier(tiny_model, adapter, 64))
    expected = predict_paths(FrozenTowerClassifier(tiny_model, adapter, 64), 64, paths)
    built = []
    real_create = models.create_model
    monkeypatch.setattr(models, "create_model", lambda spec, backbone=None: built.append(spec) or real_create(
        spec, tiny_model))
    logits = predict_test({"student": models.read_student_spec(tmp_path / "student.pt"),
                           "other": models.read_spec(tmp_path / "other.pt")}, np.array(ids), paths)
    assert [s.backbone_sha256 for s in built] == ["another tower"]  # the grid served the student: no tower built
    assert np.array_equal(logits["student"], expected) and np.allclose(logits["other"], expected, atol=1e-5)
