import pytest
import torch

from pipeline import clip
from tests.conftest import TINY_MODEL


def test_tiny_model_through_open_clip(tiny_model, tiny_tokenizer):
    text = clip.encode_classes(tiny_model, tiny_tokenizer, ["circle", "square", "ring"], ["a {}.", "the {}"])
    assert text.shape == (3, 32) and torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    x = clip.normalize_images(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), tiny_model)
    emb = clip.encode_images(tiny_model, x)
    assert emb.shape == (2, 32)
    grid = clip.grid_features(tiny_model.visual, x)
    assert grid.shape[0] == 2 and grid.ndim == 4 and grid.shape[-1] == 1  # 32 px / 32 stride


def test_scores_are_inverse_sigmoid_of_softmax():
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    z = clip.scores_to_logits(img, txt, 50.0)
    assert torch.allclose(torch.sigmoid(z), (50 * img @ txt.T).softmax(-1).clamp(1e-6, 1 - 1e-6), atol=1e-6)


def test_checkpoint_roundtrip_weights_only(tmp_path, tiny_model):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": tiny_model.state_dict(), "model": TINY_MODEL, "classes": ["a"]}, path)
    loaded = clip.create_model(TINY_MODEL, path)
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_pickled_module_refused_unless_trusted(tmp_path, tiny_model):
    path = tmp_path / "legacy.pt"
    torch.save(tiny_model, path)  # a whole pickled module, as legacy checkpoints are
    with pytest.raises(ValueError, match="trust_checkpoint"):
        clip.create_model(TINY_MODEL, path)


def test_torchscript_archive_refused_unless_trusted(tmp_path, tiny_model, tiny_tokenizer):
    path = tmp_path / "ts.pt"
    traced = torch.jit.trace(tiny_model, (torch.zeros(1, 3, 32, 32), tiny_tokenizer(["a"])), check_trace=False,
                             strict=False)
    traced.save(path)
    with pytest.raises(ValueError, match="TorchScript or pickled checkpoint.*trust_checkpoint"):
        clip.create_model(TINY_MODEL, path)


def test_resolve_pretrained_local_file_and_clear_errors(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert clip.resolve_pretrained("RN50-quickgelu", str(f)) == (f.resolve(), "file")
    with pytest.raises(clip.WeightsNotAvailable, match="not available offline"):
        clip.resolve_pretrained("RN50-quickgelu", "openai", cache_dir=tmp_path)
    with pytest.raises(clip.WeightsNotAvailable, match="neither an existing file nor a pretrained tag"):
        clip.resolve_pretrained("RN50-quickgelu", "no-such-tag", cache_dir=tmp_path)


def test_resolve_pretrained_finds_hf_cache(tmp_path):
    # Lay out a Hugging Face cache entry exactly as huggingface_hub writes it.
    repo = tmp_path / "models--timm--resnet50_clip.openai"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snap / "open_clip_model.safetensors").write_bytes(b"weights")
    path, how = clip.resolve_pretrained("RN50-quickgelu", "openai", cache_dir=tmp_path)
    assert how == "hf-cache" and path.read_bytes() == b"weights"
    assert clip.sha256_of(path) == __import__("hashlib").sha256(b"weights").hexdigest()


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        clip.create_model("no-such-model")


def test_class_prompts():
    assert clip.class_prompts(["a_b"], ["x {}", "{} y"]) == ["x a b", "a b y"]


def test_softmax_log_odds_is_exact_where_probabilities_are_representable():
    s = torch.randn(64, 7, dtype=torch.float64) * 3
    p = s.softmax(-1)
    expected = torch.log(p) - torch.log1p(-p)
    assert torch.allclose(clip.softmax_log_odds(s).double(), expected, atol=1e-4)


def test_softmax_log_odds_keeps_the_order_a_clamp_would_tie():
    # logit scale 100 (real CLIP) on cosines 0.1 apart: softmax probabilities down to e^-40 and up to
    # 1 - e^-10; clamped at 1e-6 they all tied at -13.8 (and the top ones at +13.8)
    cos = torch.tensor([[0.30, 0.20, 0.10, 0.00, -0.10, -0.20]])
    z = clip.softmax_log_odds(100 * cos)[0]
    assert torch.all(torch.isfinite(z))
    assert torch.all(z[:-1] > z[1:]), z  # strictly decreasing: no ties
    assert len(set(z.tolist())) == 6
    # the two largest are symmetric: z_top = s0 − lse(others), z_second = s1 − lse(s0, rest)
    assert float(z[0]) > 9.9 and float(z[1]) < -9.9
    one = clip.softmax_log_odds(torch.tensor([[5.0]]))
    assert one.item() == 0.0


def _openai_style_torchscript(path, name):
    """A TorchScript archive of an open_clip model, shaped like the original OpenAI `.pt` files."""
    torch.manual_seed(3)
    model = clip.create_model(name)
    traced = torch.jit.trace(model, (torch.zeros(1, 3, 32, 32), clip.tokenizer_for(name)(["a"])),
                             check_trace=False, strict=False)
    traced.save(path)
    return model


def test_trusted_torchscript_loads_through_open_clip(tmp_path):
    path = tmp_path / "RN-tiny.pt"
    original = _openai_style_torchscript(path, "mlpl-tiny-rn-quickgelu")
    assert clip.is_torchscript(path)
    loaded = clip.create_model("mlpl-tiny-rn-quickgelu", path, trust_checkpoint=True)
    for (k, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(clip.encode_images(loaded, x), clip.encode_images(original.eval(), x), atol=1e-6)


def test_torchscript_needs_the_quickgelu_config(tmp_path):
    path = tmp_path / "RN-tiny.pt"
    _openai_style_torchscript(path, "mlpl-tiny-rn-quickgelu")
    with pytest.raises(ValueError, match="use the model config mlpl-tiny-rn-quickgelu"):
        clip.create_model("mlpl-tiny-rn", path, trust_checkpoint=True)


def test_plain_checkpoint_is_not_torchscript(tmp_path, tiny_model):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": tiny_model.state_dict()}, path)
    assert not clip.is_torchscript(path) and not clip.is_torchscript(tmp_path / "absent.pt")


def test_describe_records_weights(tmp_path, tiny_model):
    path = tmp_path / "w.pt"
    torch.save({"state_dict": tiny_model.state_dict()}, path)
    d = clip.describe(TINY_MODEL, str(path))
    assert d["found_in"] == "file" and d["sha256"] == clip.sha256_of(path) and not d["trust_checkpoint"]
    loaded = clip.load_described(d)
    assert torch.equal(loaded.logit_scale, tiny_model.logit_scale)


def test_model_names_are_read_without_importing_open_clip():
    from pipeline.clip import register_model_configs, scanned_model_names

    register_model_configs()
    import open_clip

    assert scanned_model_names() == sorted(open_clip.list_models())
    assert {"mlpl-toy-rn", "RN50", "ViT-B-32"} <= set(scanned_model_names())


def test_cell_projection_is_the_attention_pool_on_one_cell(tiny_model):
    """Where every cell holds the same feature and the pool has no positional term, its attention can only
    average copies of that cell: its output is the folded value and output projections of that one cell."""
    import copy

    from pipeline.clip import cell_projection

    visual = copy.deepcopy(tiny_model.visual).eval()
    with torch.no_grad():
        visual.attnpool.positional_embedding.zero_()
    weight, bias, norm = cell_projection(visual)
    side = round((visual.attnpool.positional_embedding.shape[0] - 1) ** 0.5)
    cell = torch.randn(2, weight.shape[1])
    grid = cell[:, :, None, None].expand(-1, -1, side, side).contiguous()
    with torch.no_grad():
        assert torch.allclose(visual.attnpool(grid), cell @ weight.T + bias, atol=1e-4)
    assert norm is None  # a ModifiedResNet's cells need no norm first; a ViT's pass ln_post


def test_cell_projection_of_a_vit_is_its_final_norm_and_projection():
    from pipeline.clip import cell_projection, create_model, grid_features, joint_cells

    torch.manual_seed(0)
    model = create_model("mlpl-tiny-vit")
    visual, side = model.visual.eval(), clip.image_size_of(model)
    with torch.no_grad():
        grid = grid_features(visual, torch.randn(2, 3, side, side))
        tokens = grid.flatten(2).transpose(1, 2)  # the patch tokens, as the adapter reads them
        assert torch.allclose(joint_cells(tokens, *cell_projection(visual)), visual.ln_post(tokens) @ visual.proj,
                              atol=1e-5)
