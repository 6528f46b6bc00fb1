import numpy as np
import pytest
import zarr
from PIL import Image

from pipeline import clip
from pipeline.cut import CutSettings
from pipeline.images import ImageDecodeError, decode_image
from pipeline.scenes import SceneConfig, render_scene, scene_rng
from pipeline.scoring import ScoreJob, score_to_store

CLASSES = ["circle", "square", "triangle", "cross"]
ARRAYS = ("global", "local", "crops", "boxes", "image_emb", "text_emb")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    cfg = SceneConfig(image_size=48, n_classes=4)  # not the model's 32 px: views are resized
    paths = []
    for i in range(11):
        p = root / f"s{i}.png"
        Image.fromarray(render_scene(scene_rng(0, 0, i), cfg).image).save(p)
        paths.append(p)
    return paths


def run(model, tok, images, work, **kw):
    text = clip.encode_classes(model, tok, CLASSES, ["a {}."])
    job = ScoreJob(CutSettings(grid=2, crops=3), seed=kw.pop("seed", 0), shard_rows=4, chunk_rows=2, batch_images=3)
    return score_to_store(model, text, images, [p.stem for p in images], job, work, {"model": "tiny"},
                          progress=False, log=lambda m: None, **kw)


def read(work):
    g = zarr.open_group(str(work / "store.zarr"), mode="r")
    return {k: g[k][:] for k in ARRAYS}, dict(g.attrs)


def test_store_contents(tiny_model, tiny_tokenizer, images, tmp_path):
    assert run(tiny_model, tiny_tokenizer, images, tmp_path / "w")
    arrays, attrs = read(tmp_path / "w")
    assert arrays["global"].shape == (11, 4) and arrays["global"].dtype == np.float16
    assert arrays["local"].shape == (11, 4, 4) and arrays["crops"].shape == (11, 3, 4)
    assert arrays["boxes"].shape == (11, 3, 4) and arrays["image_emb"].shape == (11, 32)
    probs = 1 / (1 + np.exp(-arrays["global"].astype(np.float64)))
    assert np.allclose(probs.sum(1), 1.0, atol=0.02)  # logits of a softmax over classes
    assert np.allclose(np.linalg.norm(arrays["image_emb"].astype(np.float32), axis=1), 1, atol=1e-2)
    assert attrs["cut"]["crops"] == 3 and attrs["n_images"] == 11 and attrs["model"] == "tiny"
    assert sorted(p.name for p in (tmp_path / "w" / "done").iterdir()) == [f"shard-{k:06d}" for k in range(3)]


def test_resume_is_byte_identical(tiny_model, tiny_tokenizer, images, tmp_path):
    assert run(tiny_model, tiny_tokenizer, images, tmp_path / "full")
    assert not run(tiny_model, tiny_tokenizer, images, tmp_path / "part", max_shards=1)
    partial, _ = read(tmp_path / "part")
    assert not partial["global"][4:].any()  # only the first shard is written
    assert run(tiny_model, tiny_tokenizer, images, tmp_path / "part")
    a, _ = read(tmp_path / "full")
    b, _ = read(tmp_path / "part")
    for k in ARRAYS:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_other_settings_discard_partial_work(tiny_model, tiny_tokenizer, images, tmp_path):
    assert not run(tiny_model, tiny_tokenizer, images, tmp_path / "w", max_shards=1)
    assert run(tiny_model, tiny_tokenizer, images, tmp_path / "w", seed=1)
    fresh = tmp_path / "fresh"
    assert run(tiny_model, tiny_tokenizer, images, fresh, seed=1)
    assert read(tmp_path / "w")[0]["crops"].tobytes() == read(fresh)[0]["crops"].tobytes()


def test_crops_depend_on_seed(tiny_model, tiny_tokenizer, images, tmp_path):
    run(tiny_model, tiny_tokenizer, images, tmp_path / "a", seed=0)
    run(tiny_model, tiny_tokenizer, images, tmp_path / "b", seed=1)
    assert not np.array_equal(read(tmp_path / "a")[0]["boxes"], read(tmp_path / "b")[0]["boxes"])
    assert np.array_equal(read(tmp_path / "a")[0]["global"], read(tmp_path / "b")[0]["global"])


def test_undecodable_image_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG nope")
    with pytest.raises(ImageDecodeError, match="broken.png"):
        decode_image(bad)
