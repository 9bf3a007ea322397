"""Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers") on
VQGAN latents, for any latent patch size; patch=1 turns every latent pixel into a token (Nguyen et
al. 2024, arXiv 2406.09415, Sec. 5 "Image generation").

Structure follows facebookresearch/DiT `models.py` (timestep and label embedders, adaLN-Zero
blocks built from timm's `Attention` and `Mlp`, an adaLN final layer, `unpatchify`), rewritten with
three deliberate departures:
- the null ("drop") label row always exists, so classifier-free guidance works and checkpoints
  have one shape whatever `class_dropout_prob` is;
- position embeddings are either DiT's fixed 2D sin-cos ('sincos') or learned from random init
  ('learn': trunc-normal, std .02), the pixel-token paper's choice, which adds no 2D prior;
- `forward_with_cfg` guides all predicted-noise channels (DiT guides only the first three, a
  leftover from its RGB origins) and takes an un-doubled batch.

Nothing here is registered in timm, and timm is imported lazily (it takes seconds).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
from torch import nn

from pixbench.models.flops import block_forward_flops
from pixbench.models.sizes import DIT_SIZES  # noqa: F401 (re-exported)

PosEmbedKind = Literal["learn", "sincos"]

# DiT's sinusoidal timestep features before the MLP (models.py, TimestepEmbedder).
FREQUENCY_EMBEDDING_SIZE = 256


def dit_display_name(size: str, patch: int) -> str:
    """Paper-style name, e.g. `DiT-XL/2`; `DiT-XXS/1` is the latent-pixel model."""
    if size not in DIT_SIZES:
        raise ValueError(f"unknown DiT size {size!r}; known: {', '.join(DIT_SIZES)}")
    return f"DiT-{size.upper()}/{patch}"


def _check_patch(input_size: int, patch: int) -> None:
    if patch < 1 or input_size % patch != 0:
        raise ValueError(f"patch {patch} does not divide input_size {input_size}")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: per-sample shift and scale of every token; `1 + scale` so zero-init is identity."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)  # (N, T, D)


class TimestepEmbedder(nn.Module):
    """Scalar timestep -> vector: sinusoidal frequencies (Vaswani et al. 2017, as in DiT/GLIDE)
    followed by a two-layer SiLU MLP."""

    def __init__(self, *, hidden_size: int, frequency_size: int = FREQUENCY_EMBEDDING_SIZE,
                 max_period: float = 10000.0) -> None:
        super().__init__()
        self.frequency_size, self.max_period = frequency_size, max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def frequencies(self, t: torch.Tensor) -> torch.Tensor:
        """(N,) timesteps, possibly fractional -> (N, frequency_size) [cos | sin] features."""
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(self.max_period)
                          * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]  # (N, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.frequency_size % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb  # (N, frequency_size)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # the MLP runs in the weights' dtype; the frequencies are always computed in fp32
        freq = self.frequencies(t).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)  # (N, D)


class LabelEmbedder(nn.Module):
    """Class label -> vector; row `num_classes` is the null label of classifier-free guidance
    (Ho & Salimans 2022), also used for label dropout in training.

    Random dropout draws from `generator` when one is passed and from torch's global RNG
    otherwise (DiT's behaviour); `force_drop_ids` (1 = drop) overrides random dropout entirely.
    """

    def __init__(self, *, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        if not 0.0 <= dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {dropout_prob}")
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def token_drop(self, labels: torch.Tensor, *, force_drop_ids: torch.Tensor | None,
                   generator: torch.Generator | None) -> torch.Tensor:
        if force_drop_ids is not None:
            drop = force_drop_ids.to(labels.device) == 1
        else:
            # draw on the generator's device so a CPU generator can drive CUDA training
            device = generator.device if generator is not None else labels.device
            u = torch.rand(labels.shape, generator=generator, device=device)
            drop = u.to(labels.device) < self.dropout_prob
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, *, train: bool,
                force_drop_ids: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids=force_drop_ids, generator=generator)
        return self.embedding_table(labels)  # (N, D)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning (Peebles & Xie 2023, Sec. 3.2):
    the conditioning vector regresses shift/scale of both LayerNorms and a gate on each residual
    branch; the gates start at zero, so every block starts as the identity."""

    def __init__(self, *, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        from timm.layers import Mlp  # lazy: timm imports in ~5 s
        from timm.models.vision_transformer import Attention

        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio),
                       act_layer=partial(nn.GELU, approximate="tanh"), drop=0.0)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # x: (N, T, D) tokens, c: (N, D) conditioning
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c).chunk(6, dim=1))  # 6 x (N, D)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x  # (N, T, D)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map from each token to its p*p*C_out values."""

    def __init__(self, *, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (N, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, p*p*C_out)


class DiT(nn.Module):
    """Class-conditional DiT predicting the noise eps of latents `x: (N, C, H, W)`.

    `learn_sigma=True` doubles the output channels (eps, then variance values) as DiT does; the
    default trains and samples with epsilon prediction only.
    """

    def __init__(self, *, input_size: int, patch_size: int, in_channels: int, hidden_size: int,
                 depth: int, num_heads: int, num_classes: int, mlp_ratio: float = 4.0,
                 class_dropout_prob: float = 0.1, pos_embed: PosEmbedKind = "sincos",
                 learn_sigma: bool = False) -> None:
        super().__init__()
        from timm.layers import PatchEmbed  # lazy: timm imports in ~5 s

        _check_patch(input_size, patch_size)
        if pos_embed not in ("learn", "sincos"):
            raise ValueError(f"unknown pos_embed {pos_embed!r}; known: learn, sincos")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} not divisible by num_heads {num_heads}")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes, self.learn_sigma, self.pos_embed_kind = num_classes, learn_sigma, pos_embed
        self.grid = input_size // patch_size

        # a strided conv: at patch_size=1 a per-latent-pixel linear projection
        self.x_embedder = PatchEmbed(img_size=input_size, patch_size=patch_size,
                                     in_chans=in_channels, embed_dim=hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size=hidden_size)
        self.y_embedder = LabelEmbedder(num_classes=num_classes, hidden_size=hidden_size,
                                        dropout_prob=class_dropout_prob)
        # a Parameter for both kinds so checkpoints share keys; sin-cos is frozen as in DiT
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid ** 2, hidden_size),
                                      requires_grad=(pos_embed == "learn"))  # (1, T, D)
        self.blocks = nn.ModuleList([
            DiTBlock(hidden_size=hidden_size, num_heads=num_heads, mlp_ratio=mlp_ratio)
            for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size=hidden_size, patch_size=patch_size,
                                      out_channels=self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init (models.py `initialize_weights`); the zeroed adaLN and output layers make
        the untrained model predict exactly zero noise."""
        from timm.layers import trunc_normal_
        from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        with torch.no_grad():
            if self.pos_embed_kind == "sincos":
                table = build_sincos2d_pos_embed([self.grid, self.grid],
                                                 dim=self.pos_embed.shape[-1])  # (T, D)
                self.pos_embed.copy_(table[None])
            else:
                trunc_normal_(self.pos_embed, std=0.02)
        # the patch conv is initialised like a Linear on its flattened kernel
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [
                self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C_out) tokens -> (N, C_out, H, W) latents (row-major token grid)."""
        p, c, h = self.patch_size, self.out_channels, self.grid
        x = x.reshape(x.shape[0], h, h, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, h * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *,
                force_drop_ids: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """x: (N, C, H, W) noisy latents, t: (N,) or scalar timesteps (int or float), y: (N,)
        long labels (`num_classes` = null). Returns (N, C_out, H, W).

        Labels are dropped with `class_dropout_prob` only in training mode, drawing from
        `generator` (torch's global RNG if None); `force_drop_ids` (N,) forces drops (1 = drop)."""
        n = x.shape[0]
        if t.ndim == 0:
            t = t.expand(n)
        tokens = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t.to(x.device)) + self.y_embedder(
            y, train=self.training, force_drop_ids=force_drop_ids, generator=generator)  # (N, D)
        for block in self.blocks:
            tokens = block(tokens, c)  # (N, T, D)
        return self.unpatchify(self.final_layer(tokens, c))  # (N, C_out, H, W)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                         cfg_scale: float) -> torch.Tensor:
        """Classifier-free guidance (Ho & Salimans 2022): eps_u + s * (eps_c - eps_u).

        x: (N, C, H, W), un-doubled; the conditional and null-label halves run as one (2N) batch.
        Guidance applies to every eps channel; learned-variance channels (if any) are taken
        from the conditional half. Returns (N, C_out, H, W)."""
        n = x.shape[0]
        if t.ndim == 0:
            t = t.expand(n)
        # forced drops make the null half deterministic even in training mode
        drop = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
        out = self.forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y]),
                           force_drop_ids=drop.to(y.device))  # (2N, C_out, H, W)
        cond, uncond = out[:n], out[n:]
        c = self.in_channels
        eps = uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c])  # (N, C, H, W)
        return torch.cat([eps, cond[:, c:]], dim=1)


def build_dit(size: str, patch: int, *, input_size: int, in_channels: int, num_classes: int,
              pos_embed: PosEmbedKind, class_dropout_prob: float,
              learn_sigma: bool = False) -> DiT:
    """A DiT of a named size (`DIT_SIZES`) and latent patch size; every patch shares this path."""
    if size not in DIT_SIZES:
        raise ValueError(f"unknown DiT size {size!r}; known: {', '.join(DIT_SIZES)}")
    _check_patch(input_size, patch)
    return DiT(input_size=input_size, patch_size=patch, in_channels=in_channels,
               num_classes=num_classes, class_dropout_prob=class_dropout_prob,
               pos_embed=pos_embed, learn_sigma=learn_sigma, **DIT_SIZES[size])


def dit_gflops_per_step(size: str, patch: int, input_size: int, in_channels: int, *,
                        learn_sigma: bool = False, mlp_ratio: float = 4.0) -> float:
    """Analytic forward GFLOPs (2 x multiply-adds) per image per denoising step, one forward.

    Counts every matmul: patch embedding, timestep MLP, per block the transformer matmuls
    (`pixbench.models.flops.block_forward_flops`, attention QKᵀ and AV included) plus the adaLN
    modulation, and the final layer's adaLN and linear. Elementwise ops, norms and softmax are
    not counted (as in DiT's Table 4 GFLOPs). Classifier-free guidance doubles it.
    """
    if size not in DIT_SIZES:
        raise ValueError(f"unknown DiT size {size!r}; known: {', '.join(DIT_SIZES)}")
    _check_patch(input_size, patch)
    d, depth = DIT_SIZES[size]["hidden_size"], DIT_SIZES[size]["depth"]
    tokens = (input_size // patch) ** 2
    out_channels = 2 * in_channels if learn_sigma else in_channels
    embed = 2 * tokens * (patch * patch * in_channels) * d
    t_mlp = 2 * (FREQUENCY_EMBEDDING_SIZE * d + d * d)
    blocks = depth * (block_forward_flops(tokens, d, mlp_ratio) + 2 * d * 6 * d)
    final = 2 * d * 2 * d + 2 * tokens * d * patch * patch * out_channels
    return float(embed + t_mlp + blocks + final) / 1e9
