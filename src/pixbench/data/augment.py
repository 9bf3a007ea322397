"""Batched, seeded augmentation on uint8 tensors already in memory.

Working on whole batches (no per-image PIL calls, no DataLoader workers) keeps data loading far
faster than any train step on 2 cores, and a per-step torch.Generator makes every batch a pure
function of (seed, epoch, step), which is what makes resume bitwise exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pixbench.config import AugmentConfig


def random_translate(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Reflect-pad by `pad` and crop back at a random offset per image (CIFAR-style crop)."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (N, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (torch.arange(h)[None, :] + dy[:, None])  # (N, H)
    cols = (torch.arange(w)[None, :] + dx[:, None])  # (N, W)
    xp = xp.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))  # (N, C, H, W+2p)
    return xp.gather(3, cols[:, None, None, :].expand(n, c, h, w))  # (N, C, H, W)


def random_resized_crop(x: torch.Tensor, scale_min: float, gen: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """RandomResizedCrop (Szegedy et al. 2015) for a batch via one affine grid_sample."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(scale_min, 1.0, generator=gen)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = torch.exp(log_r)
    sw = torch.sqrt(area * r).clamp(max=1.0)  # crop width as a fraction of the image
    sh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sw)  # centre kept inside the image
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sh)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sw, cx
    theta[:, 1, 1], theta[:, 1, 2] = sh, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation factors in [1-s, 1+s] per image (torchvision's
    ColorJitter definitions, applied in a fixed order; hue is left out)."""
    n = x.shape[0]

    def factor() -> torch.Tensor:
        return torch.empty(n, 1, 1, 1).uniform_(1 - strength, 1 + strength, generator=gen)

    x = (x * factor()).clamp(0, 1)  # brightness
    gray_mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    x = ((x - gray_mean) * factor() + gray_mean).clamp(0, 1)  # contrast
    if x.shape[1] == 3:
        g = _gray(x)
        x = ((x - g) * factor() + g).clamp(0, 1)  # saturation
    return x


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, as torchvision's rgb_to_grayscale; (N, C, H, W) -> (N, 1, H, W)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """x: (N, C, H, W) float in [0, 1] -> augmented (N, C, H, W)."""
    if cfg.rrc_scale_min is not None:
        x = random_resized_crop(x, cfg.rrc_scale_min, gen)
    if cfg.crop_padding > 0:
        x = random_translate(x, cfg.crop_padding, gen)
    if cfg.color_jitter > 0:
        x = color_jitter(x, cfg.color_jitter, gen)
    if cfg.grayscale_p > 0 and x.shape[1] == 3:
        to_gray = torch.rand(x.shape[0], generator=gen) < cfg.grayscale_p
        x = torch.where(to_gray[:, None, None, None], _gray(x).expand_as(x), x)
    if cfg.hflip:
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              cfg: AugmentConfig | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W), optionally augmented, then standardised."""
    x = x_uint8.permute(0, 3, 1, 2).float().div_(255.0)  # (N, C, H, W)
    if cfg is not None:
        x = augment_batch(x, cfg, gen)
    return (x - mean[None, :, None, None]) / std[None, :, None, None]
