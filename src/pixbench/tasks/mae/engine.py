"""MAE pre-training, one epoch at a time (He et al. 2022's engine_pretrain split)."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from pixbench import distributed
from pixbench.data.augment import normalize
from pixbench.data.loader import Rows, epoch_batches
from pixbench.eval.measure import autocast
from pixbench.models.mae import MaskedAutoencoder
from pixbench.tasks.optim import clip_and_step, lr_at, peak_lr, set_lr
from pixbench.tasks.runner import State


def train_one_epoch(model: nn.Module, opt: torch.optim.Optimizer, images: Rows,
                    mean: torch.Tensor, std: torch.Tensor, cfg, seed: int, state: State, *,
                    device: torch.device, bf16: bool, on_step,
                    loader_workers: int | None = None) -> float:
    """The rest of epoch `state.epoch` from `state.epoch_step`; returns the mean masked MSE.
    `loader_workers`: data/loader.py's worker processes (None: its machine default)."""
    steps_per_epoch = images.shape[0] // cfg.batch_size
    total, warmup = steps_per_epoch * cfg.epochs, round(cfg.optim.warmup_epochs * steps_per_epoch)
    peak = peak_lr(cfg.optim, cfg.batch_size)
    tokens = (images.shape[1] // distributed.unwrap(model).patch) ** 2
    # this rank's shard of each global batch and of its masking noise (drawn for the whole
    # batch after the augmentation, from the same generator): N ranks mask as one process does
    batches = epoch_batches(images, None, cfg, seed, state, mean=mean, std=std, device=device,
                            workers=loader_workers, noise_tokens=tokens)
    model.train()
    while state.epoch_step < steps_per_epoch:
        t0 = time.perf_counter()
        x, _, noise = next(batches).to(device, mean, std, cfg.augment)  # (B/W, C, H, W), (B/W, L)
        set_lr(opt, lr_at(state.global_step, total, warmup, peak, cfg.optim.min_lr_ratio))
        with autocast(device, bf16):
            loss, _, _ = model(x, mask_ratio=cfg.mask_ratio, noise=noise)
        clip_and_step(model, opt, loss, cfg.optim.grad_clip)
        state.add_loss(loss.item())
        state.epoch_step, state.global_step = state.epoch_step + 1, state.global_step + 1
        state.train_time_s += time.perf_counter() - t0
        if state.epoch_step < steps_per_epoch:
            on_step(state)
    return state.loss_sum / max(1, state.loss_count)


@torch.no_grad()
def evaluate(model: MaskedAutoencoder, images: torch.Tensor, mean: torch.Tensor,
             std: torch.Tensor, mask_ratio: float, *, device: torch.device, bf16: bool,
             batch_size: int = 256) -> float:
    """Masked reconstruction loss on val images with fixed masks (seed 0): comparable across
    runs and seeds."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(0)
    total, n = 0.0, images.shape[0]
    for i in range(0, n, batch_size):
        x = normalize(images[i:i + batch_size], mean, std).to(device)
        with autocast(device, bf16):
            loss, _, _ = model(x, mask_ratio=mask_ratio, generator=gen)
        total += loss.item() * x.shape[0]
    model.train()
    return total / n


@torch.no_grad()
def reconstructions(model: MaskedAutoencoder, images: torch.Tensor, mean: torch.Tensor,
                    std: torch.Tensor, mask_ratio: float, target: str, device: torch.device) -> dict:
    """uint8 (K, H, W, C) masked inputs, reconstructions (visible tokens pasted back, as in
    MAE's demo) and originals for the report's figure."""
    model.eval()
    x = normalize(images, mean, std).to(device)  # (K, C, H, W)
    gen = torch.Generator(device=device).manual_seed(0)
    _, pred, mask = model(x, mask_ratio=mask_ratio, generator=gen)
    if target == "norm_pix":  # undo the per-token normalisation for display
        t = model.patchify(x)
        pred = pred * (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(dim=-1, keepdim=True)
    m = mask[..., None].expand_as(pred)  # (K, L, p*p*C)
    visible = model.unpatchify(model.patchify(x) * (1 - m))
    pasted = model.unpatchify(model.patchify(x) * (1 - m) + pred * m)

    def to_uint8(t: torch.Tensor) -> np.ndarray:
        t = t.cpu() * std[None, :, None, None] + mean[None, :, None, None]
        return (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    return {"masked": to_uint8(visible), "reconstruction": to_uint8(pasted),
            "original": images.numpy(), "mask": mask.cpu().numpy()}
