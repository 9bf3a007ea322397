"""The optimiser every task uses: AdamW with timm's no-decay groups and a warm-up + cosine
schedule written into the param groups each step (so no scheduler state is checkpointed)."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and position embeddings (timm's `no_weight_decay`)."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:  # fixed sin-cos position embeddings, a frozen probe encoder
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: nn.Module, o) -> torch.optim.Optimizer:
    """AdamW from an OptimConfig `o`; lr is overwritten every step by `set_lr(lr_at(...))`.

    fused: one kernel updates every tensor instead of ~10 ops per tensor; the same update rule
    (torch docs, AdamW `fused`), on CPU and CUDA. On ViT-XXS (~40 tensors) it cut the optimiser
    step from ~2.5 to ~1 ms (reports/bench/pipeline-speed.md)."""
    groups = param_groups(model, o.weight_decay)
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, fused=fused)


def peak_lr(o, batch_size: int) -> float:
    """Linear scaling of the peak lr with the global batch (Goyal et al. 2017)."""
    return o.lr * batch_size / o.lr_ref_batch


def lr_at(step: int, total: int, warmup: int, peak: float, min_ratio: float) -> float:
    """Linear warm-up then cosine decay to min_ratio * peak (Loshchilov & Hutter 2017)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def clip_and_step(model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor,
                  grad_clip: float | None) -> None:
    """zero_grad, backward, optional global-norm clipping, step: one optimiser update."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
