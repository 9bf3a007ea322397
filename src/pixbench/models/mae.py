"""Masked autoencoder (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners") for any
patch size; patch=1 masks and reconstructs single pixels (Nguyen et al. 2024, arXiv 2406.09415).

Structure follows facebookresearch/mae `models_mae.py`: patchify / random_masking /
forward_encoder / forward_decoder / forward_loss. Two deliberate departures:
- the encoder IS the classification ViT (`pixbench.models.vit.vit`, pool="avg"), so fine-tuning
  loads `encoder_state_dict()` with no key renaming;
- position embeddings (encoder and decoder) are learned from random init, not fixed 2D sin-cos:
  the pixel-token study removes the 2D locality prior, and sin-cos would put it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn

from pixbench.models.vit import SIZES, vit

Target = Literal["norm_pix", "pix"]


@dataclass(frozen=True)
class DecoderSize:
    dim: int
    depth: int
    heads: int


# Keyed by encoder size. MAE uses a 512-wide, 8-block decoder for ViT-B/L/H (He et al. 2022,
# Sec. 3 and Table 1a/b: depth 1 already fine-tunes well, width 512 is the sweet spot). The CPU
# sizes keep the encoder width and 1-2 blocks so the decoder stays a small fraction of the cost.
DECODER_SIZES: dict[str, DecoderSize] = {
    "xxs": DecoderSize(dim=48, depth=1, heads=3),
    "xs": DecoderSize(dim=64, depth=2, heads=4),
    "m": DecoderSize(dim=128, depth=2, heads=4),
    "t": DecoderSize(dim=256, depth=4, heads=8),
    "s": DecoderSize(dim=384, depth=4, heads=12),
    "b": DecoderSize(dim=512, depth=8, heads=16),
    "l": DecoderSize(dim=512, depth=8, heads=16),
}


class MaskedAutoencoder(nn.Module):
    """MAE with a timm ViT encoder; tokens are p x p x C patches, p=1 being single pixels.

    Targets (`target`):
    - "pix": the (already dataset-normalised) input pixels of each token.
    - "norm_pix": MAE's per-token normalised pixels: subtract the token's mean and divide by
      sqrt(var + 1e-6), statistics over its p*p*C values (He et al. 2022, Sec. 3 "Reconstruction
      target"; unbiased var as in models_mae.py). At p=1 the statistics run over a single pixel's
      C values: for RGB only the chroma deviation survives (brightness is discarded), and for gray
      (C*p*p == 1) the unbiased variance of one value is NaN and the centred target is
      identically 0, so it is refused with a ValueError. Hence `target` has no default: "pix" is
      the sensible choice at p=1, "norm_pix" is MAE's choice for real patches, and comparing
      patch sizes under one target is a decision for the caller to make explicitly.
    """

    def __init__(self, *, size: str, patch: int, image_size: int, in_chans: int, target: Target,
                 decoder_dim: int | None = None, decoder_depth: int | None = None,
                 decoder_heads: int | None = None) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block  # lazy: timm imports in ~5 s

        if target not in ("norm_pix", "pix"):
            raise ValueError(f"unknown target {target!r}; known: norm_pix, pix")
        if target == "norm_pix" and patch * patch * in_chans == 1:
            raise ValueError("target 'norm_pix' with one value per token (gray, patch=1) has an "
                             "all-zero target (and NaN variance); use target='pix'")
        self.patch, self.in_chans, self.target = patch, in_chans, target

        # The classifier's own module; num_classes=0 makes `head` an Identity. With pool="avg"
        # timm's `norm` is an Identity and `fc_norm` normalises the pooled vector, which MAE never
        # computes, so fc_norm is dropped here (no unused parameters under DDP) and the
        # fine-tuned classifier starts a fresh fc_norm: exactly MAE's main_finetune.py, whose
        # expected missing keys are head.* and fc_norm.*.
        self.encoder = vit(size=size, patch=patch, image_size=image_size, in_chans=in_chans,
                           num_classes=0, pool="avg")
        self.encoder.fc_norm = nn.Identity()
        assert self.encoder.num_prefix_tokens == 0  # masking below assumes no cls/reg tokens
        dim = SIZES[size].dim
        # MAE normalises the encoder output before the decoder (models_mae.py `self.norm`); it is
        # pre-training only, like MAE's, which its global-pool fine-tuning also discards.
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)

        d = DECODER_SIZES[size]
        dd = d.dim if decoder_dim is None else decoder_dim
        depth = d.depth if decoder_depth is None else decoder_depth
        heads = d.heads if decoder_heads is None else decoder_heads
        num_tokens = (image_size // patch) ** 2
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dd))
        self.decoder_blocks = nn.ModuleList(
            Block(dd, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(depth))
        self.decoder_norm = norm_layer(dd)
        self.decoder_pred = nn.Linear(dd, patch * patch * in_chans)
        self._init_decoder()

    def _init_decoder(self) -> None:
        """MAE's init for the decoder only (models_mae.py `_init_weights`); the encoder keeps
        timm's init so an MAE-free classifier and the pre-trained one start from the same recipe."""
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.decoder_pos_embed, std=0.02)
        decoder = [self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred]
        for module in nn.ModuleList(decoder).modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder weights under the `vit(...)` classifier's key names (no head, no fc_norm)."""
        return {k: v for k, v in self.encoder.state_dict().items()
                if not k.startswith(("head.", "fc_norm."))}

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), tokens in row-major order like timm's PatchEmbed."""
        p, c = self.patch, self.in_chans
        n, _, h_img, w_img = imgs.shape
        h, w = h_img // p, w_img // p
        x = imgs.reshape(n, c, h, p, w, p)  # (N, C, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)  # (N, h, w, p, p, C)
        return x.reshape(n, h * w, p * p * c)  # (N, L, p*p*C)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W); inverse of `patchify` (square images)."""
        p, c = self.patch, self.in_chans
        n, num_tokens, _ = x.shape
        h = w = int(round(num_tokens ** 0.5))
        if h * w != num_tokens:
            raise ValueError(f"{num_tokens} tokens do not form a square grid")
        x = x.reshape(n, h, w, p, p, c)  # (N, h, w, p, p, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (N, C, h, p, w, p)
        return x.reshape(n, c, h * p, w * p)  # (N, C, H, W)

    def random_masking(self, x: torch.Tensor, mask_ratio: float,
                       generator: torch.Generator | None = None,
                       noise: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample uniform masking by argsort of noise (MAE). Returns the kept tokens, the mask
        (N, L) with 0 keep / 1 remove, and ids_restore that undoes the shuffle.

        `generator` (on x's device) makes the masks reproducible by seed; each sample still draws
        its own noise row, so masks differ across the batch. `noise` (N, L), when given, is that
        noise drawn by the caller: data-parallel training draws it for the global batch and
        keeps its shard, so N ranks mask exactly as one process does."""
        n, num_tokens, dim = x.shape  # (N, L, D)
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        len_keep = int(num_tokens * (1 - mask_ratio))  # MAE's rounding, kept for comparability
        if len_keep < 1:
            raise ValueError(f"mask_ratio {mask_ratio} keeps no token of {num_tokens}")

        if noise is None:
            noise = torch.rand(n, num_tokens, device=x.device, generator=generator)  # (N, L)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # (N, L)
        ids_keep = ids_shuffle[:, :len_keep]  # (N, L_keep)
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # (N, L_keep, D)

        mask = torch.ones(n, num_tokens, device=x.device, dtype=x.dtype)  # (N, L)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # (N, L) back in image order
        return x_kept, mask, ids_restore

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float,
                        generator: torch.Generator | None = None,
                        noise: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        enc = self.encoder
        x = enc.patch_embed(imgs)  # (N, L, D)
        # Position before masking, so each kept token carries where it came from (MAE).
        x = x + enc.pos_embed  # (N, L, D)
        x, mask, ids_restore = self.random_masking(x, mask_ratio, generator, noise)  # (N, L_keep, D)
        # Same modules, same order as the classifier's forward_features (all but blocks are
        # Identity / p=0 Dropout in this config; kept so the two paths cannot drift).
        x = enc.pos_drop(x)
        x = enc.norm_pre(x)
        x = enc.blocks(x)  # (N, L_keep, D)
        x = enc.norm(x)
        return self.encoder_norm(x), mask, ids_restore  # (N, L_keep, D)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)  # (N, L_keep, Dd)
        n, len_keep, dd = x.shape
        num_masked = ids_restore.shape[1] - len_keep
        mask_tokens = self.mask_token.expand(n, num_masked, dd)  # (N, L - L_keep, Dd)
        x = torch.cat([x, mask_tokens], dim=1)  # (N, L, Dd) in shuffled order
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dd))  # (N, L, Dd) unshuffle
        x = x + self.decoder_pos_embed  # (N, L, Dd)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)  # (N, L, p*p*C)

    def reconstruction_target(self, imgs: torch.Tensor) -> torch.Tensor:
        target = self.patchify(imgs)  # (N, L, p*p*C)
        if self.target == "norm_pix":
            mean = target.mean(dim=-1, keepdim=True)  # (N, L, 1)
            var = target.var(dim=-1, keepdim=True)  # (N, L, 1), unbiased as in models_mae.py
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """MSE on removed tokens only: mean over each token's values, then over removed tokens."""
        target = self.reconstruction_target(imgs)  # (N, L, p*p*C)
        loss = ((pred - target) ** 2).mean(dim=-1)  # (N, L)
        # clamp: mask_ratio with no removed token gives 0, not 0/0
        return (loss * mask).sum() / mask.sum().clamp_min(1)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator, noise)
        pred = self.forward_decoder(latent, ids_restore)  # (N, L, p*p*C)
        return self.forward_loss(imgs, pred, mask), pred, mask
