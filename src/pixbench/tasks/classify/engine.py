"""Supervised classification's engine (MAE's engine split): the same recipe for every patch size,
only the token size changes; the trainer (tasks/trainer.py) runs its steps.

Determinism: every batch order, augmentation and stochastic-depth draw is a pure function of
(seed, epoch, step), so a run resumed from its one checkpoint ends with weights bitwise
identical to an uninterrupted run (tests/test_resume_kill.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

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
from pixbench.tasks.livelog import open_live
from pixbench.tasks.optim import adamw, clip_and_step, lr_at, peak_lr, set_lr
from pixbench.tasks.runner import State
from pixbench.tasks.trainer import Body, Schedule
from pixbench.rng import step_seed


CURVE_VAL_IMAGES = 1000  # fixed val subset for the learning curve (the full val set is the final metric)


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


def train_epochs(cfg, steps_per_epoch: int) -> int:
    """The recipe's epochs, grown to ceil(min_steps / steps_per_epoch) when that is more: a
    small dataset still gets the steps the plateau escape needs (ClassifyConfig.min_steps).
    min_steps null: exactly `epochs`, the schedule of every run before the field existed."""
    if cfg.min_steps is None:
        return cfg.epochs
    return max(cfg.epochs, math.ceil(cfg.min_steps / max(1, steps_per_epoch)))


def use_bf16(precision: str, size: str, device: torch.device) -> bool:
    """The recipe's precision; `auto` is bf16 autocast on CUDA, and on the CPU only from width
    192, where it measured 1.5-1.9x (nothing at widths 48-128)."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or SIZES[size].dim >= 192


class ClassifyBody(Body):
    """Supervised classification (the trainer's body): cross-entropy with label smoothing,
    AdamW on the recipe's warm-up + cosine schedule, stochastic depth; a curve row holds val
    top-1 on a fixed class-balanced subset (ImageFolder val splits are sorted by class)."""

    def __init__(self, spec, model: nn.Module, data: Tensors, *, device: torch.device,
                 bf16: bool, live_dir: Path | None = None,
                 loader_workers: int | None = None) -> None:
        cfg = spec.classify
        self.model, self.data, self.cfg, self.bf16 = model, data, cfg, bf16
        self.seed, self.device, self.loader_workers = spec.seed, device, loader_workers
        self.live_dir = live_dir  # dvclive's folder (rank 0), None: no dvclive log
        self.opt = adamw(distributed.unwrap(model), cfg.optim)
        per_epoch = data.train_x.shape[0] // cfg.batch_size
        self.epochs = train_epochs(cfg, per_epoch)
        self.schedule = Schedule(per_epoch * self.epochs, per_epoch, cfg.curve_every_steps or 0)
        self.warmup = round(cfg.optim.warmup_epochs * per_epoch)
        self.peak = peak_lr(cfg.optim, cfg.batch_size)
        n = min(CURVE_VAL_IMAGES, data.val_x.shape[0])
        idx = torch.from_numpy(balanced_subset(data.val_y.numpy(), n, int(data.val_y.max()) + 1))
        self.curve_x, self.curve_y = data.val_x[idx], data.val_y[idx]
        self.batches, self.live = None, None

    def modules(self) -> dict:
        return {"model": self.model, "optimizer": self.opt}

    def start(self, state: State) -> None:
        """This rank's shard of each global batch of the rest of the epoch, augmented as one
        process would augment it; dvclive's steps are the curve rows, so a resumed run opens
        it at the checkpoint's row count (no duplicates)."""
        if self.live is None and self.live_dir is not None:
            self.live = open_live(self.live_dir, len(state.history), resume=state.global_step > 0)
        d = self.data
        self.batches = epoch_batches(d.train_x, d.train_y, self.cfg, self.seed, state,
                                     mean=d.mean, std=d.std, device=self.device,
                                     workers=self.loader_workers)
        self.model.train()

    def step(self, state: State) -> dict:
        cfg, d = self.cfg, self.data
        x, y, _ = next(self.batches).to(self.device, d.mean, d.std, cfg.augment)  # (B/W, C, H, W)
        # stochastic depth: rank-aware, or every shard would draw the same drop masks
        torch.manual_seed(step_seed(self.seed, state.global_step) + 1 + 7_777 * distributed.rank())
        set_lr(self.opt, lr_at(state.global_step, self.schedule.steps, self.warmup, self.peak,
                               cfg.optim.min_lr_ratio))
        with autocast(x.device, self.bf16):
            loss = F.cross_entropy(self.model(x), y, label_smoothing=cfg.label_smoothing)
        clip_and_step(self.model, self.opt, loss, cfg.optim.grad_clip)
        return {"loss": loss.detach()}

    def row(self, state: State, train_loss: float, end: bool) -> dict:
        if end:
            self.batches = None  # the epoch's input workers end before the evaluation
        d = self.data
        top1 = evaluate(self.model, self.curve_x, self.curve_y, d.mean, d.std, device=self.device,
                        batch_size=self.cfg.eval_batch_size, bf16=self.bf16)["top1"]
        if self.live is not None:
            self.live.step = len(state.history)
            self.live.log_metric("train/loss", train_loss)
            self.live.log_metric("val/top1_subset", top1)
            self.live.next_step()
        return {"epoch": round(state.global_step / self.schedule.epoch_steps, 4),
                "step": state.global_step, "images_seen": state.global_step * self.cfg.batch_size,
                "train_loss": train_loss, "val_top1_subset": top1,
                "train_time_s": state.train_time_s}

    def progress(self, row: dict) -> str:
        return (f"loss {row['train_loss']:.4f} val@{self.curve_x.shape[0]} "
                f"{row['val_top1_subset']:.2f}%")

    def evaluate(self, check=None) -> dict:
        """Top-1, top-5 and loss on the whole val split (every rank); `check(final)` refuses a
        non-finite one before dvclive's summary is written."""
        d = self.data
        final = evaluate(self.model, d.val_x, d.val_y, d.mean, d.std, device=self.device,
                         batch_size=self.cfg.eval_batch_size, bf16=self.bf16)
        if check is not None:
            check(final)
        if self.live is not None:
            for k in ("top1", "top5", "loss"):
                self.live.summary[f"val/{k}"] = final[k]
            self.live.end()
        return final


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
