"""Analytic FLOPs of a ViT (matmuls only, 1 multiply-add = 2 FLOPs).

`torch.utils.flop_counter.FlopCounterMode` counts CPU fused attention
(`_scaled_dot_product_flash_attention_for_cpu`) as zero, which hides ~half of a pixel model's
compute, so attention is counted here analytically. `tests/test_flops.py` checks the formula
against FlopCounterMode on the same model with timm's manual (non-fused) attention path.

Per transformer block, forward, T tokens of width D, MLP ratio r (Kaplan et al. 2020; with r=4
this is the 24·T·D² + 4·T²·D used to reproduce DiT-XL/2's 118 GMAC):
    qkv projection   2·T·D·3D
    attention        2·T²·D (QKᵀ) + 2·T²·D (AV)
    output proj      2·T·D·D
    MLP              2·2·T·D·rD
Backward costs twice the forward (one matmul for the input gradient, one for the weight
gradient), so a train step is 3x forward (Chinchilla's 6N per token for the linear layers).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VitShape:
    """The numbers that fix a ViT's matmul FLOPs."""

    image_size: int
    patch: int
    in_chans: int
    dim: int
    depth: int
    mlp_ratio: float
    num_classes: int
    class_token: bool

    @property
    def patch_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2

    @property
    def tokens(self) -> int:
        return self.patch_tokens + int(self.class_token)


def block_forward_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    """Forward FLOPs of one pre-norm transformer block (matmuls only)."""
    t, d = tokens, dim
    linear = 2 * t * d * 3 * d + 2 * t * d * d + 2 * 2 * t * d * int(mlp_ratio * d)
    attention = 4 * t * t * d
    return float(linear + attention)


def vit_forward_flops(shape: VitShape) -> float:
    """Forward FLOPs per image: patch embedding + blocks + classifier head."""
    embed = 2 * shape.patch_tokens * (shape.patch ** 2 * shape.in_chans) * shape.dim
    blocks = shape.depth * block_forward_flops(shape.tokens, shape.dim, shape.mlp_ratio)
    head = 2 * shape.dim * shape.num_classes
    return float(embed + blocks + head)


def vit_train_flops(shape: VitShape) -> float:
    """Train-step FLOPs per image: forward + backward (2x forward)."""
    return 3.0 * vit_forward_flops(shape)


def attention_fraction(shape: VitShape) -> float:
    """Share of forward FLOPs in QKᵀ and AV: what FlopCounterMode misses with fused attention."""
    return shape.depth * 4 * shape.tokens ** 2 * shape.dim / vit_forward_flops(shape)


def mae_forward_flops(*, tokens: int, patch_dim: int, enc_dim: int, enc_depth: int,
                      mlp_ratio: float, dec_dim: int, dec_depth: int, mask_ratio: float) -> float:
    """Analytic forward FLOPs per image of MAE pre-training (He et al. 2022): the encoder sees
    only the kept tokens, the decoder all of them. patch_dim = p*p*C (embed input, decoder
    output)."""
    kept = int(tokens * (1 - mask_ratio))
    embed = 2 * tokens * patch_dim * enc_dim
    enc = enc_depth * block_forward_flops(kept, enc_dim, mlp_ratio)
    dec = 2 * kept * enc_dim * dec_dim + dec_depth * block_forward_flops(tokens, dec_dim, 4.0)
    return float(embed + enc + dec + 2 * tokens * dec_dim * patch_dim)
