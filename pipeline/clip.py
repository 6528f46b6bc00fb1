"""All access to the frozen vision-language model goes through here (open_clip).

Scores follow TailorCLIP: cosine similarity × logit scale, softmax over the classes, stored as logits
z = S⁻¹(softmax) so that downstream sigmoid/BCE machinery applies.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import pickle
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image showing a {}.",
    "a {} on a background.",
)


def _open_clip():
    """open_clip, imported on first use: a stage that builds no model (`sew` on stored features, the label
    stages, `validate` of most params) skips its import, ~2 s with the torchvision and torch._dynamo
    modules it pulls in."""
    import open_clip

    return open_clip


def scanned_model_names() -> list[str]:
    """The names open_clip's registry holds once ours are added, read as open_clip's factory reads them (the
    stem of every JSON config in its package's model_configs/ and ours that has embed_dim, vision_cfg and
    text_cfg) without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    dirs = [Path(spec.submodule_search_locations[0]) / "model_configs", MODEL_CONFIG_DIR]
    names = set()
    for path in (p for d in dirs for p in d.glob("*.json")):
        cfg = json.loads(path.read_text())
        if all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            names.add(path.stem)
    return sorted(names)


def model_names() -> list[str]:
    """open_clip's model config names, ours included (open_clip's own list once it is imported)."""
    if "open_clip" not in sys.modules:
        return scanned_model_names()
    register_model_configs()
    return _open_clip().list_models()


def register_model_configs() -> None:
    """Make our custom model configs (tiny test models, the toy teacher) known to open_clip."""
    if "mlpl-toy-rn" not in _open_clip().list_models():
        _open_clip().add_model_config(MODEL_CONFIG_DIR)


def is_torchscript(path: str | Path) -> bool:
    """True for a TorchScript archive (the original OpenAI `.pt` files): a zip holding compiled code."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def create_model(name: str, checkpoint: str | Path | None = None, trust_checkpoint: bool = False,
                 ) -> torch.nn.Module:
    """Build an open_clip model by config name, loading weights from a local file if given.

    Checkpoints load with weights_only=True. `trust_checkpoint` opts into full unpickling, which
    original OpenAI TorchScript files and pickled modules need; open_clip's loader then takes the
    state dict out of the archive. Set it only for files the user trusts: unpickling can run code.
    """
    register_model_configs()
    if name not in _open_clip().list_models():
        raise ValueError(f"unknown open_clip model {name!r}; see `open_clip.list_models()`")
    path = None if checkpoint is None else Path(checkpoint)
    torchscript = False
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        torchscript = is_torchscript(path)
        if torchscript and not trust_checkpoint:
            raise ValueError(f"{path} is a TorchScript or pickled checkpoint, which can run code when loaded; "
                             "set trust_checkpoint: true only if you trust the file")
        if torchscript and not name.endswith("-quickgelu") and f"{name}-quickgelu" in _open_clip().list_models():
            # OpenAI's models were trained with QuickGELU; the plain config would silently change activations
            raise ValueError(f"{path} is an original OpenAI TorchScript file: use the model config "
                             f"{name}-quickgelu, which matches its activations")
    logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were given: we load our own
    try:
        model = _open_clip().create_model(name, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    if path is not None:
        try:
            # A TorchScript archive also carries non-persistent buffers (attention masks): load non-strictly
            # and accept exactly those as extras.
            result = _open_clip().load_checkpoint(model, str(path), strict=not torchscript,
                                                  weights_only=not trust_checkpoint)
        except (RuntimeError, pickle.UnpicklingError) as e:
            if trust_checkpoint or "weights_only" not in str(e):
                raise
            raise ValueError(f"{path} is a TorchScript or pickled checkpoint, which can run code when loaded; "
                             "set trust_checkpoint: true only if you trust the file") from e
        if torchscript:
            volatile = {n for n, _ in model.named_buffers()} - set(model.state_dict())
            bad = list(result.missing_keys) + [k for k in result.unexpected_keys if k not in volatile]
            if bad:
                raise ValueError(f"{path} does not match model config {name}: mismatched keys {bad[:5]}")
    return model.eval()


def describe(name: str, pretrained: str, trust_checkpoint: bool = False) -> dict:
    """Resolve a model + weights offline, check they load, and describe them for later stages."""
    weights, how = resolve_pretrained(name, pretrained)
    create_model(name, weights, trust_checkpoint=trust_checkpoint)  # fail now, not in a later stage
    return {"model": name, "pretrained": pretrained, "weights": str(weights), "found_in": how,
            "sha256": sha256_of(weights), "trust_checkpoint": trust_checkpoint}


def load_described(descriptor: dict) -> torch.nn.Module:
    """The model a descriptor (data/teacher/descriptor.json, an adapter's backbone) names, with its weights."""
    return create_model(descriptor["model"], descriptor["weights"],
                        trust_checkpoint=bool(descriptor.get("trust_checkpoint", False)))


def tokenizer_for(name: str):
    register_model_configs()
    return _open_clip().get_tokenizer(name)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def image_size_of(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def normalizer_of(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (shape [3, 1, 1]) that the visual tower expects, for inputs in [0, 1]."""
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", _open_clip().OPENAI_DATASET_MEAN)).view(3, 1, 1)
    std = torch.tensor(cfg.get("std", _open_clip().OPENAI_DATASET_STD)).view(3, 1, 1)
    return mean, std


def normalize_u8(images_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] → float tensor, scaled to 0..1 then standardised with mean/std [3, 1, 1]."""
    return (images_u8.float() / 255.0 - mean) / std


def normalize_images(images_u8: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """uint8 [B, 3, H, W] → float tensor normalised for the model."""
    return normalize_u8(images_u8, *normalizer_of(model))


def class_prompts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    return [t.format(c.replace("_", " ")) for c in classes for t in templates]


@torch.inference_mode()
def encode_classes(model: torch.nn.Module, tokenizer, classes: Sequence[str],
                   templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """One L2-normalised text embedding per class: the mean over templates, renormalised. [C, D]"""
    tokens = tokenizer(class_prompts(classes, templates))
    emb = F.normalize(model.encode_text(tokens).float(), dim=-1)
    emb = emb.view(len(classes), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)


def encode_images(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings [B, D] for normalised image tensors."""
    return F.normalize(model.encode_image(images).float(), dim=-1)


def logit_scale_of(model: torch.nn.Module) -> float:
    return float(model.logit_scale.detach().exp().clamp(max=100.0))


def scores_to_logits(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Cosine × scale → softmax over classes → inverse sigmoid. [B, C]"""
    return softmax_log_odds(logit_scale * image_emb.float() @ text_emb.float().T)


def softmax_log_odds(s: torch.Tensor) -> torch.Tensor:
    """S⁻¹(softmax(s)) over the last axis, exactly: log p_j − log(1 − p_j) = s_j − logsumexp_{k≠j} s_k.

    No probability is formed, so nothing saturates or is clamped: a clamp at 1e-6 tied 11 % of the toy
    teacher's entries at −13.8 (far more with a real CLIP's logit scale of 100). For j ≠ argmax the sum
    over k ≠ j still holds the max's own term (1 after shifting by the max), so removing e^{s_j} loses
    no precision; the argmax's own log-sum is taken over the others directly.
    """
    s = s.float()
    if s.shape[-1] == 1:  # one class: p = 1 everywhere, no order to keep
        return torch.zeros_like(s)
    top = s.argmax(dim=-1, keepdim=True)
    m = s.gather(-1, top)
    t = torch.exp(s - m)
    rest = m + torch.log(t.sum(-1, keepdim=True) - t)  # valid wherever j ≠ argmax
    lse_without_top = torch.logsumexp(s.scatter(-1, top, float("-inf")), dim=-1, keepdim=True)
    rest = rest.scatter(-1, top, lse_without_top)
    return s - rest


def grid_features(visual: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Spatial features of a visual tower (`model.visual`) before pooling, as [B, D, H, W].

    ResNet towers: the last stage's output before attention pooling. ViT towers: patch tokens.
    """
    out = visual.forward_intermediates(images, indices=1, intermediates_only=True)
    return out["image_intermediates"][-1]


@torch.no_grad()
def cell_projection(visual: torch.nn.Module
                    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """The map of one cell of `grid_features` into the joint image-text space: (weight [E, D], bias [E],
    (LayerNorm weight, bias) [D] applied before it, or None), e = weight · LN(cell) + bias.

    ModifiedResNet towers: the attention pool's value and output projections folded into one (the pool's
    output were all its attention on that cell, without the positional term, which is tied to the native
    grid; MaskCLIP, Zhou et al. 2022, reads dense CLIP features this way). ViT towers: the final norm and
    projection of the patch tokens (`ln_post`, `proj`), as the tower maps its pooled token; MaskCLIP's ViT
    recipe reads the last block's value projection instead.
    """
    if hasattr(visual, "attnpool"):
        v, c = visual.attnpool.v_proj, visual.attnpool.c_proj
        return (c.weight.float() @ v.weight.float(), c.weight.float() @ v.bias.float() + c.bias.float(), None)
    if hasattr(visual, "ln_post") and getattr(visual, "proj", None) is not None:
        norm = (visual.ln_post.weight.detach().float().clone(), visual.ln_post.bias.detach().float().clone())
        return visual.proj.detach().float().T.clone(), torch.zeros(visual.proj.shape[1]), norm
    raise ValueError(f"no map of single cells into the joint space for a {type(visual).__name__} tower "
                     "(ModifiedResNet and ViT towers have one)")


def joint_cells(cells: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                norm: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Cells [..., D] of `grid_features` mapped into the joint space by a `cell_projection`: [..., E]."""
    if norm is not None:
        cells = F.layer_norm(cells, cells.shape[-1:], *norm)
    return F.linear(cells, weight, bias)


class WeightsNotAvailable(FileNotFoundError):
    pass


HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def resolve_pretrained(name: str, pretrained: str, cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """Find weights for `pretrained` (a local file, or an open_clip tag) without any network access.

    Tags are looked up in the Hugging Face cache (the hub repo open_clip would download from) and in
    open_clip's URL cache. Returns (file, how it was found); raises WeightsNotAvailable naming what
    was searched.
    """
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path.resolve(), "file"
    register_model_configs()
    cfg = _open_clip().get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = _open_clip().list_pretrained_tags_by_model(name)
        raise WeightsNotAvailable(
            f"teacher.pretrained={pretrained!r} is neither an existing file nor a pretrained tag of {name!r} "
            f"(known tags: {tags or 'none'})")
    searched = []
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id = "/".join(hub.strip("/").split("/")[:2])
        explicit = hub.strip("/").split("/")[2:]
        for fname in (["/".join(explicit)] if explicit else list(HF_WEIGHT_FILES)):
            hit = try_to_load_from_cache(repo_id, fname, cache_dir=cache_dir)
            searched.append(f"HF cache {repo_id}/{fname}")
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit), "hf-cache"
    url = cfg.get("url", "")
    if url:
        local = Path(cache_dir or Path.home() / ".cache" / "clip") / Path(url).name
        searched.append(str(local))
        if local.is_file():
            return local, "open_clip-cache"
    raise WeightsNotAvailable(
        f"weights for {name} / {pretrained!r} are not available offline; searched: {'; '.join(searched)}. "
        "Download them on a connected machine (e.g. open_clip.create_model(..., pretrained=tag) fills the "
        "Hugging Face cache) or set teacher.pretrained to a local checkpoint file.")
