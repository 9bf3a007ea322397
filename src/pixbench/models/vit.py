"""The classification ViT: one timm code path for every patch size; patch=1 is the pixel model.

timm's `PatchEmbed` is a strided convolution, so `patch_size=1` is a per-pixel linear projection
(Nguyen et al. 2024, Sec. 2: "each pixel is linearly projected"). Position embeddings are learned
and randomly initialised (`pos_embed='learn'`); `dynamic_img_size` stays off because its 2D
interpolation would reintroduce the grid prior the paper removes.

Nothing here is registered in timm: `pit_*` names belong to timm's unrelated PiT.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from pixbench.models.flops import VitShape
from pixbench.models.locality import PosEmbed, attach_pixel_permutation, set_pos_embed
from pixbench.models.sizes import SIZES, ViTSize  # noqa: F401 (re-exported)


Pool = Literal["avg", "cls"]


def model_key(size: str, patch: int) -> str:
    """Registry-style key, e.g. `vit-s-p4`."""
    return f"vit-{size}-p{patch}"


def display_name(size: str, patch: int) -> str:
    """Paper-style name, e.g. `ViT-S/4` (`ViT-S/1` is the pixel model)."""
    return f"ViT-{SIZES[size].name}/{patch}"


def vit_shape(*, size: str, patch: int, image_size: int, in_chans: int, num_classes: int,
              pool: Pool) -> VitShape:
    s = SIZES[size]
    return VitShape(image_size=image_size, patch=patch, in_chans=in_chans, dim=s.dim,
                    depth=s.depth, mlp_ratio=s.mlp_ratio, num_classes=num_classes,
                    class_token=(pool == "cls"))


def check_patch(image_size: int, patch: int) -> None:
    if patch < 1 or image_size % patch != 0:
        raise ValueError(f"patch {patch} does not divide image size {image_size}")


def vit(*, size: str, patch: int, image_size: int, in_chans: int, num_classes: int,
        pool: Pool = "avg", drop_path: float = 0.0, pos_embed: PosEmbed = "learn",
        pixel_perm: torch.Tensor | None = None) -> nn.Module:
    """A timm VisionTransformer of a named size; every patch size shares this path.

    pos_embed: 'learn' (the paper's: learned, random init), 'sincos' (fixed 2D, DiT/MAE) or
    'none'. pixel_perm: an optional fixed (H*W,) pixel permutation applied before tokenising.
    """
    from timm.models.vision_transformer import VisionTransformer  # lazy: timm imports in ~5 s

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    check_patch(image_size, patch)
    s = SIZES[size]
    model = VisionTransformer(
        img_size=image_size,
        patch_size=patch,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=s.dim,
        depth=s.depth,
        num_heads=s.heads,
        mlp_ratio=s.mlp_ratio,
        class_token=(pool == "cls"),
        global_pool="token" if pool == "cls" else "avg",
        # 'learn' is randomly initialised (trunc-normal, std .02): no 2D prior
        pos_embed="none" if pos_embed == "none" else "learn",
        dynamic_img_size=False,
        drop_path_rate=drop_path,
    )
    set_pos_embed(model, pos_embed, image_size // patch)
    if pixel_perm is not None:
        attach_pixel_permutation(model, pixel_perm)
    return model
