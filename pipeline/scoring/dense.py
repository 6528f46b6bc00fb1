"""Dense view scoring (`score.views: dense`, ours): one tower forward per image, every view pooled from it.

`score.views: crops` re-encodes each of the 1 + K + M views (global, tiles, crops) at the tower's native
size: 40 forwards per image with the defaults. `dense` encodes the image once at `dense_size` (auto: twice
the native side for ResNets, so the feature map has twice as many cells per side; a ViT's native side)
and pools each view's box from the tower's final feature map [D, H, W]:

- ModifiedResNet towers (CLIP RN50, the toy teacher): RoIAlign of the box to the native s×s cells of the
  attention pool, then the model's own attention pool (its weights and positional embedding unchanged):
  what the tower would pool from the box seen at its native size, up to the context the convolutions saw
  outside the box. Computed as `attention_pool_rois`: keys and values projected once per image, not per
  box, or the pool's projections would cost more than the forward saved.
- ViT towers: the mean of the last block's patch tokens inside the box (RoIAlign to one cell), through the
  model's final norm and projection (`ln_post`, `proj`). CLIP's ViTs pool the class token; pooling patch
  tokens is an approximation (MaskCLIP, Zhou et al. 2022, take the last layer's value tokens instead).

Tower FLOPs per image: one forward at (dense_size / native)² the pixels, 4 native forwards at the auto
size, against 1 + K + M; the README measures what each mode's estimators are worth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline import clip


def dense_size_for(model: torch.nn.Module, dense_size: int | None) -> int:
    """The side at which dense scoring encodes images: `dense_size`, or (auto) twice the tower's native side
    for convolutional towers and the native side for ViTs, whose positional embedding fixes their input."""
    if dense_size is not None:
        return dense_size
    return clip.image_size_of(model) * (2 if hasattr(model.visual, "attnpool") else 1)


def pooled_embeddings(visual: torch.nn.Module, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Embeddings [B, V, E] (not normalised) of every box [B, V, 4] (x0, y0, x1, y1, fractions of the side)
    of normalised images [B, 3, S, S], from one forward of the visual tower."""
    grid = clip.grid_features(visual, images)  # [B, D, H, W]
    b, v = boxes.shape[:2]
    h, w = grid.shape[-2:]
    scale = torch.tensor([w, h, w, h], dtype=grid.dtype, device=grid.device)
    rois = torch.cat([torch.arange(b, device=grid.device, dtype=grid.dtype).repeat_interleave(v)[:, None],
                      boxes.reshape(b * v, 4).to(grid) * scale], dim=1)
    if hasattr(visual, "attnpool"):
        emb = attention_pool_rois(visual.attnpool, grid, rois)
    elif hasattr(visual, "ln_post") and hasattr(visual, "proj"):
        tokens = _align(grid, rois, 1)[:, 0]
        emb = visual.ln_post(tokens)
        if visual.proj is not None:
            emb = emb @ visual.proj
    else:
        raise ValueError(f"score.views: dense pools ModifiedResNet and ViT towers, not {type(visual).__name__}")
    return emb.view(b, v, -1)



def _align(maps: torch.Tensor, rois: torch.Tensor, cells: int) -> torch.Tensor:
    """RoIAlign of [B, D, H, W] maps to cells×cells per RoI, as tokens [R, cells², D]. One bilinear sample at the
    centre of each bin of one cell (sampling_ratio -1 adapts to the bin), so a box on whole cells reads them."""
    from torchvision.ops import roi_align  # on use: torchvision.ops imports torch._dynamo (~1 s)

    out = roi_align(maps, rois, output_size=cells, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return out.flatten(2).transpose(1, 2)


def attention_pool_rois(pool: torch.nn.Module, grid: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """open_clip's AttentionPool2d applied to every RoI of `grid` [B, D, H, W], RoI-aligned to its native
    s×s cells: equal to pool(roi_align(grid, rois, s)) up to rounding, at a fraction of the cost.

    The pool's key and value projections are linear, as are RoIAlign and the mean token, so they commute:
    keys and values are projected once on the whole feature map and then pooled per RoI (their positional
    terms W·pos + b added after); only the query of the mean token and the output projection are computed
    per RoI (or, where RoIs outnumber cells, the query map too). The pool itself computes queries for every
    token and keeps the first."""
    d = grid.shape[1]
    heads = pool.num_heads
    cells = round((pool.positional_embedding.shape[0] - 1) ** 0.5)
    pos = pool.positional_embedding.to(grid.dtype)  # [s² + 1, D]: the mean token's, then each cell's
    wk, wv = pool.k_proj.weight.to(grid.dtype), pool.v_proj.weight.to(grid.dtype)
    k_cells = _align(F.conv2d(grid, wk[:, :, None, None]), rois, cells)
    v_cells = _align(F.conv2d(grid, wv[:, :, None, None]), rois, cells)
    k = torch.cat([k_cells.mean(1, keepdim=True), k_cells], 1) + F.linear(pos, wk, pool.k_proj.bias.to(grid.dtype))
    v = torch.cat([v_cells.mean(1, keepdim=True), v_cells], 1) + F.linear(pos, wv, pool.v_proj.bias.to(grid.dtype))
    wq, bq = pool.q_proj.weight.to(grid.dtype), pool.q_proj.bias.to(grid.dtype)
    if len(rois) < grid.shape[0] * grid.shape[2] * grid.shape[3]:  # fewer RoIs than cells: project per RoI
        q = F.linear(_align(grid, rois, cells).mean(1) + pos[0], wq, bq)  # [R, D]
    else:
        q = _align(F.conv2d(grid, wq[:, :, None, None]), rois, cells).mean(1) + F.linear(pos[0], wq, bq)
    r = q.shape[0]
    split = (r, -1, heads, d // heads)
    out = F.scaled_dot_product_attention(q.view(split).transpose(1, 2), k.view(split).transpose(1, 2),
                                         v.view(split).transpose(1, 2))  # [R, heads, 1, D / heads]
    return pool.c_proj(out.transpose(1, 2).reshape(r, d))
