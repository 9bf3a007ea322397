"""Supervised classification, one epoch at a time (MAE's engine split): the same recipe for every
patch size, only the token size changes.

Determinism: every batch order, augmentation and stochastic-depth draw is a pure function of
(seed, epoch, step), so a run resumed from its one checkpoint ends with weights bitwise
identical to an uninterrupted run (tests/test_resume_kill.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pixbench import distributed
from pixbench.data.augment import normalize
from pixbench.data.loader import Rows, epoch_batches
from pixbench.data.subsets import balanced_subset
from pixbench.eval.measure import autocast
from pixbench.models.vit import SIZES
from pixbench.tasks.optim import clip_and_step, lr_at, peak_lr, set_lr
from pixbench.tasks.runner import State
from pixbench.tasks.seeds import step_seed


@dataclass
class Tensors:
    """The run's data: uint8 (N, H, W, C) image rows of the (memory-mapped) cache, int64
    labels in memory, normalisation."""

    train_x: Rows
    train_y: torch.Tensor
    val_x: Rows
    val_y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def load_tensors(ds, train_subset: int | None, val_subset: int | None) -> Tensors:
    """Fixed class-balanced subsets: the images stay in the cache's memory map (batches read
    only their rows), the labels are copied."""
    k = len(ds.classes)
    tr = balanced_subset(np.asarray(ds.train_labels), train_subset, k)
    va = balanced_subset(np.asarray(ds.val_labels), val_subset, k)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    return Tensors(Rows(ds.train_images, tr), t(ds.train_labels[tr]), Rows(ds.val_images, va),
                   t(ds.val_labels[va]), torch.tensor(ds.mean), torch.tensor(ds.std))


def use_bf16(precision: str, size: str, device: torch.device) -> bool:
    """The recipe's precision; `auto` is bf16 autocast on CUDA, and on the CPU only from width
    192, where it measured 1.5-1.9x (nothing at widths 48-128)."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or SIZES[size].dim >= 192


def train_one_epoch(model: nn.Module, opt: torch.optim.Optimizer, data: Tensors, cfg, seed: int,
                    state: State, *, device: torch.device, bf16: bool, on_step,
                    loader_workers: int | None = None) -> float:
    """Run the rest of epoch `state.epoch` from `state.epoch_step`; returns the epoch's mean
    train loss (over all of its steps, across resumes: the running sum is in the State).
    `on_step(state, loss)` runs after every update (progress, curve points, checkpoints).
    `loader_workers`: data/loader.py's worker processes (None: its machine default)."""
    n = data.train_x.shape[0]
    steps_per_epoch = n // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    peak = peak_lr(cfg.optim, cfg.batch_size)
    # this rank's shard of each global batch, augmented as one process would augment it
    batches = epoch_batches(data.train_x, data.train_y, cfg, seed, state, mean=data.mean,
                            std=data.std, device=device, workers=loader_workers)
    model.train()
    while state.epoch_step < steps_per_epoch:
        t0 = time.perf_counter()
        x, y, _ = next(batches).to(device, data.mean, data.std, cfg.augment)  # (B/W, C, H, W)
        # stochastic depth: rank-aware, or every shard would draw the same drop masks
        torch.manual_seed(step_seed(seed, state.global_step) + 1 + 7_777 * distributed.rank())
        set_lr(opt, lr_at(state.global_step, total, warmup, peak, cfg.optim.min_lr_ratio))
        with autocast(x.device, bf16):
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        clip_and_step(model, opt, loss, cfg.optim.grad_clip)
        loss_value = loss.item()  # the step's one host sync
        state.add_loss(loss_value)
        state.epoch_step += 1
        state.global_step += 1
        state.train_time_s += time.perf_counter() - t0
        on_step(state, loss_value)
    return state.loss_sum / max(1, state.loss_count)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
             std: torch.Tensor, *, device: torch.device, batch_size: int, bf16: bool) -> dict:
    """Top-1, top-5 (when there are >5 classes) and mean cross-entropy over the given images."""
    model.eval()
    n, correct1, correct5, loss_sum = images.shape[0], 0, 0, 0.0
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        x = normalize(images[i:i + batch_size], mean, std).to(device)  # (B, C, H, W)
        y = labels[i:i + batch_size].to(device)
        with autocast(x.device, bf16):
            logits = model(x).float()  # (B, K)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5)
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
    model.train()
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n,
            "n": n, "eval_s": time.perf_counter() - t0}
