"""VQGAN parts (Esser et al. 2021, "Taming Transformers"): diffusers' VQModel as the
encoder / quantiser / decoder, a PatchGAN discriminator, the hinge loss, taming's adaptive
adversarial weight, and dead-code restarts.

Why diffusers' VQModel and not vector-quantize-pytorch: its folder format (save_pretrained /
from_pretrained) is the one pretrained LDM tokenizers ship in, so a trained and a downloaded
tokenizer load through one path. Its quantiser has no remedy against dead codes, so restarts
are added here (Dhariwal et al. 2020, Jukebox §3: re-seed unused codes from encoder outputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def build_vqmodel(*, in_channels: int, downsample: int, base_channels: int,
                  layers_per_block: int, mid_attention: bool, latent_channels: int,
                  codebook_size: int, commitment: float, sample_size: int):
    """A VQModel whose width doubles at each of log2(downsample) down-samplings."""
    from diffusers import VQModel

    levels = downsample.bit_length()  # log2(f) + 1 for a power of 2
    channels = tuple(base_channels * 2 ** i for i in range(levels))
    model = VQModel(in_channels=in_channels, out_channels=in_channels,
                    down_block_types=("DownEncoderBlock2D",) * levels,
                    up_block_types=("UpDecoderBlock2D",) * levels,
                    block_out_channels=channels, layers_per_block=layers_per_block,
                    latent_channels=latent_channels, num_vq_embeddings=codebook_size,
                    vq_embed_dim=latent_channels, norm_num_groups=min(8, base_channels),
                    sample_size=sample_size, mid_block_add_attention=mid_attention)
    configure_quantizer(model, commitment)
    return model


def configure_quantizer(model, commitment: float) -> None:
    # diffusers' `legacy=True` default puts β on the codebook term instead of the commitment
    # term (its own note in VectorQuantizer); use the VQ-VAE loss as published.
    model.quantize.legacy = False
    model.quantize.beta = commitment


def vq_forward(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                    torch.Tensor]:
    """x (N, C, H, W) in [-1, 1] -> (reconstruction, vq loss, code indices (N, h, w), z)."""
    z = model.encode(x).latents                          # (N, c, h, w) pre-quantisation
    zq, vq_loss, (_, _, idx) = model.quantize(z)         # straight-through zq
    rec = model.decode(zq, force_not_quantize=True).sample  # (N, C, H, W)
    return rec, vq_loss, idx.view(z.shape[0], z.shape[2], z.shape[3]), z


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017) as in taming's NLayerDiscriminator: strided 4x4 convs,
    BatchNorm, LeakyReLU(0.2); one logit per receptive-field patch."""

    def __init__(self, *, in_channels: int, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers + 1):
            c_out = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            seq += [nn.Conv2d(c, c_out, 4, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                    nn.LeakyReLU(0.2)]
            c = c_out
        seq.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)
        for m in self.modules():  # taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, 1, h', w') patch logits


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """taming's calculate_adaptive_lambda: balance the GAN gradient against the
    reconstruction gradient at the decoder's last layer (Esser et al. 2021, eq. 7)."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return w.clamp(0.0, 1e4).detach() * scale


@torch.no_grad()
def restart_dead_codes(codebook: torch.Tensor, last_used: torch.Tensor, idx: torch.Tensor,
                       z: torch.Tensor, step: int, patience: int,
                       generator: torch.Generator) -> int:
    """Mark codes used at `step`; re-seed those unused for `patience` steps with random
    encoder outputs of this batch. codebook (K, c); last_used (K,) long; z (N, c, h, w).
    Returns the number of codes re-seeded."""
    last_used[idx.flatten().unique()] = step
    if patience <= 0:
        return 0
    dead = torch.nonzero(step - last_used >= patience).flatten()
    if dead.numel() == 0:
        return 0
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (N*h*w, c)
    pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator)
    codebook[dead] = flat[pick.to(flat.device)].to(codebook.dtype)
    last_used[dead] = step
    return int(dead.numel())


def code_stats(idx: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Codebook usage (share of codes used at least once) and perplexity exp(H(p))."""
    return code_stats_from_counts(torch.bincount(idx.flatten(), minlength=codebook_size))


def code_stats_from_counts(counts: torch.Tensor) -> dict[str, float]:
    """code_stats from a per-code histogram (K,) (so codes can be counted chunk by chunk)."""
    counts = counts.double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codes_used": int((counts > 0).sum()),
            "codebook_usage": float((counts > 0).double().mean()),
            "perplexity": float(entropy.exp())}
