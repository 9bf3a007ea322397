"""Locality ablations: fixed pixel permutations and position-embedding variants.

The paper's claim (Nguyen et al. 2024, Sec. 4) is that patchification imposes a locality prior
while a pixel model with learned position embeddings assumes nothing about the 2D grid. A fixed
pixel permutation, applied to train and val alike, tests it: a p=1 model with learned position
embeddings is exactly equivariant to it (tests/test_locality.py), a p>1 model is not, because a
permutation scatters the pixels of a patch.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

PosEmbed = Literal["learn", "sincos", "none"]


def shuffle_permutation(height: int, width: int, seed: int) -> torch.Tensor:
    """A full random permutation of the H*W pixel positions. (H*W,) int64."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(height * width, generator=gen)


def local_swap_permutation(height: int, width: int, swaps: int, distance: int,
                           seed: int) -> torch.Tensor:
    """The paper's "T swaps within distance δ": start from the identity and swap T times a
    uniformly drawn pixel with one at Chebyshev distance ≤ δ (clipped to the image). (H*W,)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.arange(height * width)
    ys = torch.randint(0, height, (swaps,), generator=gen)
    xs = torch.randint(0, width, (swaps,), generator=gen)
    dys = torch.randint(-distance, distance + 1, (swaps,), generator=gen)
    dxs = torch.randint(-distance, distance + 1, (swaps,), generator=gen)
    for y, x, dy, dx in zip(ys.tolist(), xs.tolist(), dys.tolist(), dxs.tolist()):
        y2, x2 = min(max(y + dy, 0), height - 1), min(max(x + dx, 0), width - 1)
        i, j = y * width + x, y2 * width + x2
        perm[i], perm[j] = perm[j].clone(), perm[i].clone()
    return perm


def permute_pixels(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x: (N, C, H, W); output pixel k is input pixel perm[k] (row-major positions)."""
    n, c, h, w = x.shape
    return x.flatten(2)[:, :, perm].reshape(n, c, h, w)


def attach_pixel_permutation(model: nn.Module, perm: torch.Tensor) -> None:
    """Permute pixels where tokens are made: a pre-hook on the patch embedding, so every task
    built on this ViT (classification, MAE) sees the same fixed permutation, train and val alike.
    The permutation is a non-persistent buffer: state dicts stay those of a plain ViT."""
    embed = model.patch_embed
    embed.register_buffer("pixel_perm", perm.clone(), persistent=False)
    embed.register_forward_pre_hook(lambda mod, args: (permute_pixels(args[0], mod.pixel_perm),)
                                    + tuple(args[1:]))


def set_pos_embed(model: nn.Module, kind: PosEmbed, grid: int) -> None:
    """2D sin-cos (fixed, as MAE/DiT) replaces the learned table; 'none' is built by timm."""
    if kind != "sincos":
        return
    from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

    dim = model.pos_embed.shape[-1]
    table = build_sincos2d_pos_embed([grid, grid], dim=dim)  # (T, D)
    prefix = model.pos_embed.shape[1] - grid * grid  # 1 when the class token has a position
    full = torch.cat([torch.zeros(prefix, dim), table], dim=0)[None]  # (1, prefix + T, D)
    model.pos_embed = nn.Parameter(full, requires_grad=False)
