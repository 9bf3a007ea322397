"""Batched, seeded augmentation on uint8 tensors, in two halves: `draw` takes every per-sample
parameter of one *global* batch from the step's generator (cheap, O(batch) numbers), `apply`
transforms any rows of that batch with them, on the CPU or the GPU.

Splitting the two lets each rank (and each loader worker) augment only its own shard and still
get exactly the rows one process augmenting the whole batch gets: every op below is per-sample,
and every parameter derived from a random draw (exp, sqrt of the crop box) is computed once on
the global vector, so a shard's numbers are bitwise the global batch's numbers. The draws are
taken in the order the earlier single-pass code took them, so committed results are unchanged.
A per-step torch.Generator makes every batch a pure function of (seed, epoch, step), which is
what makes resume bitwise exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pixbench.config import AugmentConfig

Draws = dict[str, torch.Tensor]  # name -> per-sample tensor, first dim = batch rows


def _rrc_theta(n: int, scale_min: float, gen: torch.Generator,
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """RandomResizedCrop (Szegedy et al. 2015) boxes as affine matrices (N, 2, 3)."""
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
    return theta


def draw(n: int, channels: int, cfg: AugmentConfig, gen: torch.Generator) -> Draws:
    """Every random number of one batch of n images, in the order `apply` uses them."""
    d: Draws = {}
    if cfg.rrc_scale_min is not None:
        d["theta"] = _rrc_theta(n, cfg.rrc_scale_min, gen)  # (N, 2, 3)
    if cfg.crop_padding > 0:
        d["dy"] = torch.randint(0, 2 * cfg.crop_padding + 1, (n,), generator=gen)
        d["dx"] = torch.randint(0, 2 * cfg.crop_padding + 1, (n,), generator=gen)
    if cfg.color_jitter > 0:
        s = cfg.color_jitter
        for k in ("brightness", "contrast", "saturation")[:3 if channels == 3 else 2]:
            d[k] = torch.empty(n, 1, 1, 1).uniform_(1 - s, 1 + s, generator=gen)
    if cfg.grayscale_p > 0 and channels == 3:
        d["gray"] = torch.rand(n, generator=gen) < cfg.grayscale_p
    if cfg.hflip:
        d["flip"] = torch.rand(n, generator=gen) < 0.5
    return d


def rows(d: Draws, sel: slice) -> Draws:
    return {k: v[sel] for k, v in d.items()}


def to_device(d: Draws, device: torch.device, non_blocking: bool = False) -> Draws:
    return {k: v.to(device, non_blocking=non_blocking) for k, v in d.items()}


def random_resized_crop(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Crop-and-resize every image by its (2, 3) box with one affine grid_sample."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_translate(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Reflect-pad by `pad` and crop back at offset (dy, dx) per image (CIFAR-style crop)."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (N, C, H+2p, W+2p)
    rws = torch.arange(h, device=x.device)[None, :] + dy[:, None]  # (N, H)
    cols = torch.arange(w, device=x.device)[None, :] + dx[:, None]  # (N, W)
    xp = xp.gather(2, rws[:, None, :, None].expand(n, c, h, w + 2 * pad))  # (N, C, H, W+2p)
    return xp.gather(3, cols[:, None, None, :].expand(n, c, h, w))  # (N, C, H, W)


def color_jitter(x: torch.Tensor, d: Draws) -> torch.Tensor:
    """Brightness, contrast, saturation factors per image (torchvision's ColorJitter
    definitions, applied in a fixed order; hue is left out)."""
    x = (x * d["brightness"]).clamp(0, 1)
    gray_mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    x = ((x - gray_mean) * d["contrast"] + gray_mean).clamp(0, 1)
    if "saturation" in d:
        g = _gray(x)
        x = ((x - g) * d["saturation"] + g).clamp(0, 1)
    return x


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, as torchvision's rgb_to_grayscale; (N, C, H, W) -> (N, 1, H, W)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def apply(x: torch.Tensor, d: Draws, cfg: AugmentConfig) -> torch.Tensor:
    """x: (N, C, H, W) float in [0, 1] and the N rows' draws -> augmented (N, C, H, W)."""
    if "theta" in d:
        x = random_resized_crop(x, d["theta"])
    if "dx" in d:
        x = random_translate(x, cfg.crop_padding, d["dy"], d["dx"])
    if "brightness" in d:
        x = color_jitter(x, d)
    if "gray" in d:
        x = torch.where(d["gray"][:, None, None, None], _gray(x).expand_as(x), x)
    if "flip" in d:
        x = torch.where(d["flip"][:, None, None, None], x.flip(3), x)
    return x


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """x: (N, C, H, W) float in [0, 1] -> augmented (N, C, H, W): the whole batch at once."""
    return apply(x, draw(x.shape[0], x.shape[1], cfg, gen), cfg)


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              cfg: AugmentConfig | None = None, gen: torch.Generator | None = None, *,
              draws: Draws | None = None) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W), optionally augmented (with `gen`'s draws for
    these N images, or with given `draws` for them), then standardised. Works on the tensor's
    device; mean and std move there."""
    x = x_uint8.permute(0, 3, 1, 2).float().div_(255.0)  # (N, C, H, W)
    if cfg is not None:
        x = apply(x, draws if draws is not None else draw(x.shape[0], x.shape[1], cfg, gen), cfg)
    mean, std = mean.to(x.device), std.to(x.device)
    return (x - mean[None, :, None, None]) / std[None, :, None, None]
