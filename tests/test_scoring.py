import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from pipeline import clip
from pipeline.cut import CutSettings
from pipeline.images import ImageDecodeError, decode_image
from pipeline.scenes import SceneConfig, render_scene, scene_rng
from pipeline.scoring import (
    ScoreJob,
    ShardWriter,
    cpu_has_native_bf16,
    forward_slices,
    images_per_batch,
    resolve_batch_views,
    resolve_precision,
    score_to_store,
    shard_batches,
)
from stages.common import Params, ParamsError
from stages.score import score_job

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
    cut = CutSettings(grid=2, crops=3, views=kw.pop("views", "crops"), dense_size=kw.pop("dense_size", None))
    job = ScoreJob(cut, seed=kw.pop("seed", 0), shard_rows=4, chunk_rows=2,
                   batch_images=kw.pop("batch_images", 3), batch_views=kw.pop("batch_views", None),
                   precision=kw.pop("precision", "auto"))
    return score_to_store(model, text, images, [p.stem for p in images], job, work, {"model": "tiny"},
                          progress=False, log=kw.pop("log", lambda m: None), **kw)


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


def test_resume_drops_a_killed_runs_half_written_chunk(tiny_model, tiny_tokenizer, images, tmp_path):
    assert run(tiny_model, tiny_tokenizer, images, tmp_path / "full")
    assert not run(tiny_model, tiny_tokenizer, images, tmp_path / "part", max_shards=1)
    # what zarr's LocalStore leaves when SIGKILL lands between writing a chunk's temp file and renaming it
    orphan = tmp_path / "part" / "store.zarr" / "crops" / "c" / "1" / "0" / "0.4a3a1c51a92d457f.partial"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"")
    logged = []
    assert run(tiny_model, tiny_tokenizer, images, tmp_path / "part", log=logged.append)
    assert any("removed 1 half-written chunk file" in line for line in logged), logged
    files = {w: {p.relative_to(tmp_path / w / "store.zarr"): p.read_bytes()
                 for p in (tmp_path / w / "store.zarr").rglob("*") if p.is_file()} for w in ("full", "part")}
    assert files["part"] == files["full"]


def markers(work):
    return sorted(p.name for p in (work / "done").iterdir())


def test_other_settings_discard_partial_work(tiny_model, tiny_tokenizer, images, tmp_path):
    assert not run(tiny_model, tiny_tokenizer, images, tmp_path / "w", max_shards=2)
    assert not run(tiny_model, tiny_tokenizer, images, tmp_path / "w", seed=1, max_shards=1)
    assert markers(tmp_path / "w") == ["shard-000000"]  # the other run's marker of shard 1 is gone with its store
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


# ------------------------------------------------------------------------------ precision, batching, writer

def test_precision_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu, native_bf16=False) == "fp32"
    assert resolve_precision("auto", cpu, native_bf16=True) == "bf16"
    assert resolve_precision("auto", cuda) == "fp16"
    assert resolve_precision("fp32", cuda) == "fp32" and resolve_precision("bf16", cpu, native_bf16=False) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", cpu)
    assert not cpu_has_native_bf16({"avx", "avx2", "fma", "avx512f", "avx512bw"})  # AVX-512 alone emulates bf16
    assert cpu_has_native_bf16({"avx2", "avx512f", "avx512_bf16"}) and cpu_has_native_bf16({"amx_bf16"})


def test_cpu_class_names_the_limits_held_on_mkl_and_onednn(monkeypatch):
    from pipeline.scoring.device import LIBRARY_ISA_VARIABLES, cpu_class, library_isa_limits

    assert library_isa_limits({}) == "" and library_isa_limits({"MKL_ENABLE_INSTRUCTIONS": ""}) == ""
    assert library_isa_limits({"MKL_ENABLE_INSTRUCTIONS": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                               "DNNL_MAX_CPU_ISA": "AVX512_CORE"}) == "MKL AVX2, oneDNN AVX2"
    assert library_isa_limits({"DNNL_MAX_CPU_ISA": "avx2"}) == "oneDNN AVX2"
    for _, variable in LIBRARY_ISA_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    plain = cpu_class(torch.device("cpu"))
    assert "(" not in plain and plain.endswith("bf16")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    # the two fp32 paths of an AVX-512 machine (ATen alone held to AVX2, or every library) read differently
    assert cpu_class(torch.device("cpu")) == plain.replace(" kernels,", " kernels (MKL AVX2, oneDNN AVX2),")


def test_forced_bf16_is_recorded_and_close_to_fp32(tiny_model, tiny_tokenizer, images, tmp_path):
    assert run(tiny_model, tiny_tokenizer, images, tmp_path / "fp32", precision="fp32")
    assert run(tiny_model, tiny_tokenizer, images, tmp_path / "bf16", precision="bf16")
    (a, attrs_a), (b, attrs_b) = read(tmp_path / "fp32"), read(tmp_path / "bf16")
    assert attrs_a["precision"] == "fp32" and attrs_b["precision"] == "bf16"
    assert attrs_a["fingerprint"] != attrs_b["fingerprint"]  # a resume never mixes precisions
    emb_a, emb_b = a["image_emb"].astype(np.float32), b["image_emb"].astype(np.float32)
    assert not np.array_equal(emb_a, emb_b)  # autocast really ran in bf16
    assert np.abs(emb_a - emb_b).max() < 0.05  # bf16 keeps ~3 significant digits


def test_auto_precision_on_this_machine(tiny_model, tiny_tokenizer, images, tmp_path):
    assert run(tiny_model, tiny_tokenizer, images[:4], tmp_path / "w")
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert read(tmp_path / "w")[1]["precision"] == expected


def test_batches_never_cross_shards():
    for n, shard_rows, batch in [(11, 4, 3), (10, 5, 5), (7, 3, 16), (257, 256, 16), (1, 4, 2)]:
        bounds = ScoreJob(CutSettings(), shard_rows=shard_rows).shards(n)
        todo = [k for k in range(len(bounds)) if k != 1]  # as after a resume that finished shard 1
        batches = shard_batches(bounds, todo, batch)
        for b in batches:
            assert len({i // shard_rows for i in b}) == 1 and 0 < len(b) <= batch
        assert [i for b in batches for i in b] == [i for k in todo for i in range(*bounds[k])]


def test_forward_slices_cover_views_evenly():
    for n, cap in [(480, 512), (480, 41), (480, 1), (29, 7), (1, 5)]:
        parts = forward_slices(n, cap)
        assert [i for p in parts for i in range(n)[p]] == list(range(n))
        sizes = [p.stop - p.start for p in parts]
        assert max(sizes) <= cap and max(sizes) - min(sizes) <= 1 and len(parts) == -(-n // cap)
    cpu = torch.device("cpu")
    assert resolve_batch_views(None, 64, cpu) == 512  # the embedded default: one forward per 16-image batch
    assert resolve_batch_views(None, 224, cpu) == 41 and resolve_batch_views(7, 224, cpu) == 7
    assert resolve_batch_views(None, 224, torch.device("cuda"), free_bytes=16 << 30) == 668
    # a loader batch holds no more views than one forward takes, so memory follows batch_views
    assert images_per_batch(16, 512, 30) == 16 and images_per_batch(16, 41, 30) == 1
    assert images_per_batch(16, 64, 30) == 2 and images_per_batch(16, 10, 30) == 1


def test_batch_size_changes_results_only_by_rounding(tiny_model, tiny_tokenizer, images, tmp_path):
    assert run(tiny_model, tiny_tokenizer, images, tmp_path / "a")
    assert run(tiny_model, tiny_tokenizer, images, tmp_path / "b", batch_images=4, batch_views=5)
    (a, _), (b, _) = read(tmp_path / "a"), read(tmp_path / "b")
    assert a["boxes"].tobytes() == b["boxes"].tobytes()
    for k in ("global", "local", "crops", "image_emb"):
        np.testing.assert_allclose(a[k].astype(np.float32), b[k].astype(np.float32), rtol=2e-3, atol=2e-3)


def test_batch_views_param_is_checked(tmp_path):
    base = (tmp_path / "p.yaml")
    text = ("score: {seed: 0, grid: 2, crops: 1, crop_area: [0.1, 0.3], crop_aspect: [0.75, 1.33], flip: false, "
            "shard_rows: 4, chunk_rows: 2, batch_images: 2, num_workers: 0")
    base.write_text(text + "}\n")
    job = score_job(Params.load(base).section("score"))
    assert (job.batch_views, job.precision, job.device) == (None, "auto", "auto")
    for bad, key in [("batch_views: 0", "score.batch_views"), ("batch_views: many", "score.batch_views"),
                     ("precision: fp8", "score.precision"), ("device: tpu", "score.device")]:
        base.write_text(text + ", " + bad + "}\n")
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            score_job(Params.load(base).section("score"))


class FailingArray:
    """Array stand-in that fails on the rows of one shard, as a full disk would."""

    def __init__(self, rows: int, fail_at: int):
        self.data, self.fail_at = np.zeros(rows), fail_at

    def __setitem__(self, sel: slice, value) -> None:
        if sel.start == self.fail_at:
            raise OSError("No space left on device")
        self.data[sel] = value


def test_writer_error_propagates_and_leaves_shard_unmarked(tmp_path):
    arrays = {"a": np.zeros(12), "b": FailingArray(12, fail_at=4)}
    writer = ShardWriter(arrays, tmp_path, max_pending=1)
    with pytest.raises(RuntimeError, match="writing scores failed: No space left") as info:
        for k in range(3):  # the failure surfaces at the next put or at close, whichever comes first
            writer.put(k, 4 * k, 4 * k + 4, {"a": np.full(4, k + 1.0), "b": np.full(4, k + 1.0)})
        writer.close()
    assert isinstance(info.value.__cause__, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000"]
    assert not arrays["a"][8:].any()  # nothing is written after the failure


def test_scoring_stops_on_write_error_and_resumes(tiny_model, tiny_tokenizer, images, tmp_path, monkeypatch):
    original = zarr.Array.__setitem__

    def failing(self, sel, value):
        if self.basename == "crops" and isinstance(sel, slice) and sel.start == 4:
            raise OSError("No space left on device")
        original(self, sel, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", failing)
    with pytest.raises(RuntimeError, match="writing scores failed"):
        run(tiny_model, tiny_tokenizer, images, tmp_path / "w")
    assert "shard-000001" not in markers(tmp_path / "w")
    monkeypatch.setattr(zarr.Array, "__setitem__", original)
    assert run(tiny_model, tiny_tokenizer, images, tmp_path / "w")
    assert run(tiny_model, tiny_tokenizer, images, tmp_path / "fresh")
    a, b = read(tmp_path / "w")[0], read(tmp_path / "fresh")[0]
    for k in ARRAYS:
        assert a[k].tobytes() == b[k].tobytes(), k


def encoded_views(model) -> list[int]:
    """Counts the images each tower forward encodes (a hook on the stem's first convolution)."""
    seen: list[int] = []
    model.visual.conv1.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    return seen


def test_dense_views_pool_every_box_from_one_forward(tiny_tokenizer, images, tmp_path):
    torch.manual_seed(0)
    model = clip.create_model("mlpl-tiny-rn")
    seen = encoded_views(model)
    assert run(model, tiny_tokenizer, images, tmp_path / "crops", precision="fp32")
    assert sum(seen) == 11 * (1 + 4 + 3)
    seen.clear()
    # at the native size, the global view pooled from the feature map is the tower's own embedding
    assert run(model, tiny_tokenizer, images, tmp_path / "native", precision="fp32", views="dense", dense_size=32)
    assert sum(seen) == 11  # one forward per image
    crops, _ = read(tmp_path / "crops")
    native, attrs = read(tmp_path / "native")
    assert np.array_equal(native["global"], crops["global"]) and np.array_equal(native["boxes"], crops["boxes"])
    assert attrs["cut"]["views"] == "dense"
    seen.clear()
    assert run(model, tiny_tokenizer, images, tmp_path / "dense", precision="fp32", views="dense")  # auto: 64 px
    dense, _ = read(tmp_path / "dense")
    assert sum(seen) == 11 and {k: v.shape for k, v in dense.items()} == {k: v.shape for k, v in crops.items()}
    assert np.array_equal(dense["boxes"], crops["boxes"]) and np.isfinite(dense["crops"]).all()
    assert not np.array_equal(dense["crops"], crops["crops"])  # pooled, not re-encoded
    with pytest.raises(ValueError, match="score.flip needs score.views: crops"):
        CutSettings(views="dense", flip=True)


def test_dense_pooling_maps_boxes_to_feature_cells():
    from pipeline.scoring.dense import pooled_embeddings

    torch.manual_seed(0)
    vit = clip.create_model("mlpl-tiny-vit").eval().visual  # 32 px, patches of 8: a 4×4 token grid
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        tokens = clip.grid_features(vit, x)
        pooled = pooled_embeddings(vit, x, torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.25, 1.0, 1.0]]] * 2))
        top_left = vit.ln_post(tokens[:, :, :2, :2].mean((2, 3))) @ vit.proj
        lower_right = vit.ln_post(tokens[:, :, 1:, 2:].mean((2, 3))) @ vit.proj
    assert torch.allclose(pooled[:, 0], top_left, atol=1e-5) and torch.allclose(pooled[:, 1], lower_right, atol=1e-5)
    rn = clip.create_model("mlpl-tiny-rn").eval().visual
    with torch.inference_mode():  # ResNet: the whole box at the native size is the attention pool's own input
        whole = pooled_embeddings(rn, x, torch.tensor([[[0.0, 0.0, 1.0, 1.0]]] * 2))[:, 0]
        assert torch.allclose(whole, rn(x), atol=1e-5)


def test_attention_pool_over_rois_is_the_pool_of_the_aligned_regions():
    from torchvision.ops import roi_align

    from pipeline.scoring.dense import attention_pool_rois

    torch.manual_seed(0)
    pool = clip.create_model("mlpl-toy-rn").eval().visual.attnpool  # 2×2 native cells, 4 heads
    grid = torch.randn(2, 512, 5, 5)
    few = torch.tensor([[0, 0.3, 0.2, 3.1, 2.9], [1, 0.0, 0.0, 5.0, 5.0], [1, 1.0, 1.5, 2.0, 4.5]])
    for rois in (few, few.repeat(20, 1)):  # fewer RoIs than cells (queries per RoI), then more (a query map)
        with torch.inference_mode():
            fast = attention_pool_rois(pool, grid, rois)  # keys and values projected once per map
            plain = pool(roi_align(grid, rois, 2, 1.0, -1, True))
        assert torch.allclose(fast, plain, atol=1e-5)
