"""Supervised classification: the same recipe for every patch size, only the token size changes.

Determinism: every batch order, augmentation and stochastic-depth draw is a pure function of
(seed, epoch, step), so a run resumed from its one checkpoint path ends with weights bitwise
identical to an uninterrupted run (tests/test_resume.py).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pixbench import distributed
from pixbench.config import ClassifyConfig, Paths, RunSpec, spec_diff
from pixbench.data.augment import normalize
from pixbench.data.cache import CachedDataset, load_cache
from pixbench.errors import UserError
from pixbench.eval.flops import vit_forward_flops, vit_train_flops
from pixbench.eval.measure import autocast, measure_inference, measure_train
from pixbench.models.locality import local_swap_permutation, shuffle_permutation
from pixbench.models.vit import SIZES, display_name, model_key, vit, vit_shape
from pixbench.runio import (CKPT_NAME, atomic_write_json, load_checkpoint, read_json,
                            run_manifest, save_checkpoint)

CURVE_VAL_IMAGES = 1000  # fixed val subset for the per-epoch learning curve (the full val set is the final metric)


@dataclass
class Tensors:
    """The run's data in memory: uint8 (N, H, W, C) images, int64 labels, normalisation."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


@dataclass
class State:
    """Everything the checkpoint holds besides model and optimizer weights."""

    epoch: int = 0  # next epoch to run
    step: int = 0  # next step within that epoch
    global_step: int = 0
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    loss_sum: float = 0.0  # of the current epoch, so a resumed epoch reports the same mean
    loss_count: int = 0
    history: list[dict] = field(default_factory=list)


def balanced_subset(labels: np.ndarray, n: int | None, num_classes: int) -> np.ndarray:
    """A fixed class-balanced subset (seed 0 for every run: all cells see the same images)."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    per_class = math.ceil(n / num_classes)
    picked = np.concatenate([order[labels[order] == c][:per_class] for c in range(num_classes)])
    return np.sort(rng.permutation(picked)[:n])


def load_tensors(ds: CachedDataset, cfg: ClassifyConfig) -> Tensors:
    """Subsets copied into memory on the CPU; batches are augmented there and then moved."""
    k = len(ds.classes)
    tr = balanced_subset(np.asarray(ds.train_labels), cfg.train_subset, k)
    va = balanced_subset(np.asarray(ds.val_labels), cfg.val_subset, k)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    return Tensors(t(ds.train_images[tr]), t(ds.train_labels[tr]), t(ds.val_images[va]),
                   t(ds.val_labels[va]), torch.tensor(ds.mean), torch.tensor(ds.std))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and position embeddings (timm's `no_weight_decay`)."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:  # fixed sin-cos position embeddings
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, total: int, warmup: int, peak: float, min_ratio: float) -> float:
    """Linear warm-up then cosine decay to min_ratio * peak (Loshchilov & Hutter 2017)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def step_seed(seed: int, global_step: int) -> int:
    return (seed * 1_000_003 + global_step * 7919 + 17) % (2**63 - 1)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(step_seed(seed, -1 - epoch))
    return torch.randperm(n, generator=gen)


def use_bf16(cfg: ClassifyConfig, size: str, device: torch.device) -> bool:
    if cfg.precision != "auto":
        return cfg.precision == "bf16"
    # measured: 1.5-1.9x from bf16 autocast on this CPU at width 192, nothing at 48-128
    return device.type == "cuda" or SIZES[size].dim >= 192


def train_one_epoch(model: nn.Module, opt: torch.optim.Optimizer, data: Tensors, spec: RunSpec,
                    state: State, *, device: torch.device, bf16: bool, on_step=None,
                    on_checkpoint=None) -> float:
    """Run the rest of epoch `state.epoch` from `state.step`; returns the mean train loss."""
    cfg = spec.classify
    n = data.train_x.shape[0]
    steps_per_epoch = n // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    peak = cfg.optim.lr * cfg.batch_size / cfg.optim.lr_ref_batch
    order = epoch_order(n, spec.seed, state.epoch)
    model.train()
    while state.step < steps_per_epoch:
        t0 = time.perf_counter()
        idx = order[state.step * cfg.batch_size:(state.step + 1) * cfg.batch_size]
        gen = torch.Generator().manual_seed(step_seed(spec.seed, state.global_step))
        # every rank augments the whole global batch with the same generator and keeps its
        # shard, so N ranks compute what one process would (up to reduction order)
        x = normalize(data.train_x[idx], data.mean, data.std, cfg.augment, gen)  # (B, C, H, W)
        mine = distributed.shard(torch.arange(idx.shape[0]))
        x, y = x[mine].to(device, non_blocking=True), data.train_y[idx[mine]].to(device)
        # stochastic depth: rank-aware, or every shard would draw the same drop masks
        torch.manual_seed(step_seed(spec.seed, state.global_step) + 1 + 7_777 * distributed.rank())
        lr = lr_at(state.global_step, total, warmup, peak, cfg.optim.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast(x.device, bf16):
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        state.loss_sum += loss.item()
        state.loss_count += 1
        state.step += 1
        state.global_step += 1
        state.train_time_s += time.perf_counter() - t0
        if on_step is not None:
            on_step(state, loss.item(), lr)
        if on_checkpoint is not None and state.step < steps_per_epoch:
            on_checkpoint(state, final=False)
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


# ---------------------------------------------------------------------------------------- run


def pixel_permutation(cfg: ClassifyConfig, image_size: int) -> torch.Tensor | None:
    perm = cfg.permutation
    if perm.kind == "shuffle":
        return shuffle_permutation(image_size, image_size, perm.seed)
    if perm.kind == "local":
        return local_swap_permutation(image_size, image_size, perm.swaps, perm.distance, perm.seed)
    return None


HEAD_KEYS = {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}


def load_pretrained_encoder(model: nn.Module, spec: RunSpec, paths: Paths) -> None:
    """Load the MAE encoder of spec.init exactly (checked), and freeze it for a linear probe."""
    path = paths.run_dir(spec.profile, spec.init["run_id"]) / "encoder.pt"
    if not path.is_file():
        raise UserError(f"pre-trained encoder not found: {path} (run `pixbench mae pretrain "
                        f"--patch {spec.patch} --seed {spec.seed}` first)")
    from pixbench.runio import load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt.get("spec_digest") != spec.init["digest"]:
        raise UserError(f"{path}: encoder of another pre-training spec than params.yaml gives; "
                        "re-run the pre-training")
    missing, unexpected = model.load_state_dict(ckpt["encoder"], strict=False)
    if unexpected or not set(missing) <= HEAD_KEYS:
        raise UserError(f"{path}: encoder does not fit ViT-{spec.size}/{spec.patch} "
                        f"(missing {sorted(set(missing) - HEAD_KEYS)[:3]}, unexpected {unexpected[:3]})")
    if spec.task == "mae-linprobe":  # only the pooled-feature norm and the head train
        for name, p in model.named_parameters():
            p.requires_grad_(name in HEAD_KEYS)


def build_model(spec: RunSpec, ds_manifest: dict) -> nn.Module:
    """The one place config becomes model kwargs; seeded so init is a function of the seed."""
    torch.manual_seed(spec.seed)
    size = ds_manifest["image_size"]
    return vit(size=spec.size, patch=spec.patch, image_size=size,
               in_chans=ds_manifest["channels"], num_classes=ds_manifest["num_classes"],
               pool=spec.classify.pool, drop_path=spec.classify.drop_path,
               pos_embed=spec.classify.pos_embed,
               pixel_perm=pixel_permutation(spec.classify, size))


def open_run_dir(run_dir: Path, spec: RunSpec, stale: str) -> dict | None:
    """Check an existing run dir against the spec. Returns finished metrics to reuse, or None.

    A run dir written for another spec is an error naming the differing fields, unless
    stale == "restart" (DVC re-runs after a params change), which discards it.
    """
    spec_path = run_dir / "spec.json"
    if not run_dir.exists():
        return None
    if spec_path.exists():
        old = read_json(spec_path, "run spec")
        if old.get("digest") == spec.digest():
            metrics_path = run_dir / "metrics.json"
            return read_json(metrics_path, "metrics") if metrics_path.exists() else None
        if stale != "restart":
            diff = spec_diff(old.get("spec", {}), spec.canonical())
            what = run_dir / CKPT_NAME if (run_dir / CKPT_NAME).exists() else spec_path
            raise UserError(f"{what} was written for another spec ({'; '.join(diff[:3]) or 'digest'}); "
                            "pass --stale restart to discard it")
    elif (run_dir / CKPT_NAME).exists() and stale != "restart":
        raise UserError(f"{run_dir / CKPT_NAME} has no spec.json beside it; pass --stale restart")
    shutil.rmtree(run_dir)
    return None


def compute_metrics(model: nn.Module, spec: RunSpec, ds: CachedDataset, data: Tensors,
                    final: dict, state: State, *, device: torch.device, bf16: bool) -> dict:
    m = ds.manifest
    shape = vit_shape(size=spec.size, patch=spec.patch, image_size=m["image_size"],
                      in_chans=m["channels"], num_classes=m["num_classes"], pool=spec.classify.pool)
    b = min(spec.classify.batch_size, data.train_x.shape[0])
    x = normalize(data.train_x[:b], data.mean, data.std).to(device)
    y = data.train_y[:b].to(device)
    steps = spec.classify.throughput_steps
    speed = {**measure_train(model, x, y, bf16=bf16, steps=steps),
             **measure_inference(model, x, bf16=bf16, steps=steps)}
    return {
        "run_id": spec.run_id, "task": spec.task, "model": model_key(spec.size, spec.patch),
        "display": display_name(spec.size, spec.patch), "profile": spec.profile,
        "dataset": m["source"], "image_size": m["image_size"], "size": spec.size,
        "patch": spec.patch, "seed": spec.seed, "variant": spec.variant,
        "pos_embed": spec.classify.pos_embed, "permutation": spec.classify.permutation.kind,
        "tokens": shape.patch_tokens,
        "num_classes": m["num_classes"],
        "params": sum(p.numel() for p in model.parameters()),
        "top1": final["top1"], "top5": final["top5"], "loss": final["loss"], "val_n": final["n"],
        "train_loss": state.history[-1]["train_loss"] if state.history else None,
        "gflops_infer": vit_forward_flops(shape) / 1e9, "gflops_train": vit_train_flops(shape) / 1e9,
        **speed, "precision": "bf16" if bf16 else "fp32", "device": device.type,
        "epochs": spec.classify.epochs, "steps": state.global_step,
        "images_seen": state.global_step * spec.classify.batch_size,
        "train_s": state.train_time_s, "wall_s": state.wall_time_s,
        "eval_img_per_s": final["n"] / final["eval_s"], "spec_digest": spec.digest(),
    }


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: CUDA is not available on this machine")
    return torch.device(requested)


def run(spec: RunSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
        progress: bool = True) -> dict:
    """Train and evaluate one (size, patch, seed) cell; resumes from ckpt/last.pt."""
    from pixbench.tasks.loop import train_loop

    run_dir = paths.run_dir(spec.profile, spec.run_id)
    done = open_run_dir(run_dir, spec, stale) if distributed.is_main() else None
    distributed.barrier()
    if done is not None or (run_dir / "metrics.json").exists():
        return done or read_json(run_dir / "metrics.json", "metrics")
    dev = pick_device(distributed.local_device(device))
    ds = load_cache(paths.cache_for(spec.profile))
    if ds.manifest.get("spec") != spec.data.model_dump():
        raise UserError(f"{paths.cache_for(spec.profile)}: cache was prepared for another data "
                        "spec; re-run `pixbench data prepare`")
    if ds.image_size % spec.patch:
        raise UserError(f"--patch {spec.patch} does not divide the cached image size {ds.image_size}")
    data = load_tensors(ds, spec.classify)
    if data.train_x.shape[0] < spec.classify.batch_size:
        raise UserError(f"classify.batch_size={spec.classify.batch_size} exceeds the "
                        f"{data.train_x.shape[0]} training images")
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "spec.json", {"digest": spec.digest(), "spec": spec.canonical()})
        manifest = run_manifest(spec.seed, str(dev))
        atomic_write_json(run_dir / "manifest.json", {**manifest, "world_size": distributed.world_size()})
    bf16 = use_bf16(spec.classify, spec.size, dev)
    model = build_model(spec, ds.manifest)
    if spec.init is not None:
        load_pretrained_encoder(model, spec, paths)
    model = distributed.wrap(model.to(dev), dev)
    final, state = train_loop(model, spec, data, run_dir, device=dev, bf16=bf16, progress=progress)
    metrics = {}
    if distributed.is_main():
        metrics = compute_metrics(distributed.unwrap(model), spec, ds, data, final, state,
                                  device=dev, bf16=bf16)
        atomic_write_json(run_dir / "curve.json", state.history)
        atomic_write_json(run_dir / "metrics.json", metrics)
    distributed.barrier()
    return metrics
