"""MAE pre-training (He et al. 2022) on pixel tokens or patches; fine-tuning and the linear probe
are classification runs initialised from its encoder (tasks/classify.py, `spec.init`).

As in classification, every batch, augmentation and mask is a pure function of (seed, step), so
a resumed run ends bitwise where an uninterrupted one would.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pixbench import distributed
from pixbench.config import Paths, PretrainSpec
from pixbench.data.augment import normalize
from pixbench.data.cache import load_cache
from pixbench.errors import UserError
from pixbench.eval.flops import block_forward_flops
from pixbench.eval.measure import autocast
from pixbench.models.mae import DECODER_SIZES, MaskedAutoencoder
from pixbench.models.vit import SIZES, display_name
from pixbench.runio import (CKPT_NAME, atomic_write_bytes, atomic_write_json, run_manifest,
                            save_checkpoint)
from pixbench.tasks.classify import (State, balanced_subset, epoch_order, lr_at, open_run_dir,
                                     pick_device, step_seed)
from pixbench.tasks.loop import Checkpointer, optimizer_for, restore

ENCODER_FILE = "encoder.pt"
RECON_IMAGES = 8  # fixed val images for the reconstruction figure


def mae_forward_flops(spec: PretrainSpec, image_size: int, in_chans: int) -> float:
    """Analytic forward FLOPs per image: the encoder sees only the kept tokens, the decoder all."""
    s, d = SIZES[spec.size], DECODER_SIZES[spec.size]
    tokens = (image_size // spec.patch) ** 2
    kept = int(tokens * (1 - spec.pretrain.mask_ratio))
    out = spec.patch ** 2 * in_chans
    embed = 2 * tokens * out * s.dim
    enc = s.depth * block_forward_flops(kept, s.dim, s.mlp_ratio)
    dec = 2 * kept * s.dim * d.dim + d.depth * block_forward_flops(tokens, d.dim, 4.0)
    return float(embed + enc + dec + 2 * tokens * d.dim * out)


def build_mae(spec: PretrainSpec, manifest: dict) -> MaskedAutoencoder:
    torch.manual_seed(spec.seed)
    return MaskedAutoencoder(size=spec.size, patch=spec.patch, image_size=manifest["image_size"],
                             in_chans=manifest["channels"], target=spec.pretrain.target)


def train_one_epoch(model: nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor,
                    mean: torch.Tensor, std: torch.Tensor, spec: PretrainSpec, state: State, *,
                    device: torch.device, bf16: bool, on_checkpoint=None) -> float:
    """The rest of epoch `state.epoch` from `state.step`; returns the mean masked MSE."""
    cfg = spec.pretrain
    steps_per_epoch = images.shape[0] // cfg.batch_size
    total, warmup = steps_per_epoch * cfg.epochs, round(cfg.optim.warmup_epochs * steps_per_epoch)
    peak = cfg.optim.lr * cfg.batch_size / cfg.optim.lr_ref_batch
    order = epoch_order(images.shape[0], spec.seed, state.epoch)
    model.train()
    while state.step < steps_per_epoch:
        t0 = time.perf_counter()
        idx = order[state.step * cfg.batch_size:(state.step + 1) * cfg.batch_size]
        gen = torch.Generator().manual_seed(step_seed(spec.seed, state.global_step))
        x = normalize(images[idx], mean, std, cfg.augment, gen)  # (B, C, H, W)
        x = x[distributed.shard(torch.arange(x.shape[0]))].to(device)
        mask_gen = torch.Generator(device=device).manual_seed(
            step_seed(spec.seed, state.global_step) + 2 + 7_777 * distributed.rank())
        for group in opt.param_groups:
            group["lr"] = lr_at(state.global_step, total, warmup, peak, cfg.optim.min_lr_ratio)
        with autocast(device, bf16):
            loss, _, _ = model(x, mask_ratio=cfg.mask_ratio, generator=mask_gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        state.loss_sum, state.loss_count = state.loss_sum + loss.item(), state.loss_count + 1
        state.step, state.global_step = state.step + 1, state.global_step + 1
        state.train_time_s += time.perf_counter() - t0
        if on_checkpoint is not None and state.step < steps_per_epoch:
            on_checkpoint(state, final=False)
    return state.loss_sum / max(1, state.loss_count)


@torch.no_grad()
def evaluate(model: MaskedAutoencoder, images: torch.Tensor, mean: torch.Tensor,
             std: torch.Tensor, spec: PretrainSpec, *, device: torch.device, bf16: bool,
             batch_size: int = 256) -> float:
    """Masked reconstruction loss on val images with fixed masks (seed 0): comparable across
    runs and seeds."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(0)
    total, n = 0.0, images.shape[0]
    for i in range(0, n, batch_size):
        x = normalize(images[i:i + batch_size], mean, std).to(device)
        with autocast(device, bf16):
            loss, _, _ = model(x, mask_ratio=spec.pretrain.mask_ratio, generator=gen)
        total += loss.item() * x.shape[0]
    model.train()
    return total / n


@torch.no_grad()
def reconstructions(model: MaskedAutoencoder, images: torch.Tensor, mean: torch.Tensor,
                    std: torch.Tensor, spec: PretrainSpec, device: torch.device) -> dict:
    """uint8 (K, H, W, C) masked inputs, reconstructions (visible tokens pasted back, as in
    MAE's demo) and originals for the report's figure."""
    model.eval()
    x = normalize(images, mean, std).to(device)  # (K, C, H, W)
    gen = torch.Generator(device=device).manual_seed(0)
    _, pred, mask = model(x, mask_ratio=spec.pretrain.mask_ratio, generator=gen)
    if spec.pretrain.target == "norm_pix":  # undo the per-token normalisation for display
        t = model.patchify(x)
        pred = pred * (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(dim=-1, keepdim=True)
    m = mask[..., None].expand_as(pred)  # (K, L, p*p*C)
    visible = model.unpatchify(model.patchify(x) * (1 - m))
    pasted = model.unpatchify(model.patchify(x) * (1 - m) + pred * m)

    def to_uint8(t: torch.Tensor) -> np.ndarray:
        t = t.cpu() * std[None, :, None, None] + mean[None, :, None, None]
        return (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    return {"masked": to_uint8(visible), "reconstruction": to_uint8(pasted), "original": images.numpy(),
            "mask": mask.cpu().numpy()}


def run(spec: PretrainSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
        progress: bool = True) -> dict:
    """Pre-train one (size, patch, seed) cell; resumes from ckpt/last.pt; writes encoder.pt."""
    run_dir = paths.run_dir(spec.profile, spec.run_id)
    done = open_run_dir(run_dir, spec, stale) if distributed.is_main() else None
    distributed.barrier()
    if done is not None:
        return done
    dev = pick_device(distributed.local_device(device))
    ds = load_cache(paths.cache_for(spec.profile))
    if ds.manifest.get("spec") != spec.data.model_dump():
        raise UserError(f"{paths.cache_for(spec.profile)}: cache was prepared for another data "
                        "spec; re-run `pixbench data prepare`")
    cfg, k = spec.pretrain, len(ds.classes)
    tr = balanced_subset(np.asarray(ds.train_labels), cfg.train_subset, k)
    images = torch.from_numpy(np.ascontiguousarray(ds.train_images[tr]))  # (N, H, W, C) uint8
    val_idx = balanced_subset(np.asarray(ds.val_labels), 1000, k)
    val = torch.from_numpy(np.ascontiguousarray(ds.val_images[val_idx]))
    mean, std = torch.tensor(ds.mean), torch.tensor(ds.std)
    if images.shape[0] < cfg.batch_size:
        raise UserError(f"mae.pretrain.batch_size={cfg.batch_size} exceeds the "
                        f"{images.shape[0]} training images")
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "spec.json", {"digest": spec.digest(), "spec": spec.canonical()})
        atomic_write_json(run_dir / "manifest.json", run_manifest(spec.seed, str(dev)))
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and (
        dev.type == "cuda" or SIZES[spec.size].dim >= 192))  # as classify.use_bf16
    model = build_mae(spec, ds.manifest).to(dev)
    ddp = distributed.wrap(model, dev)
    opt = optimizer_for(model, cfg.optim)
    state = restore(model, opt, run_dir / CKPT_NAME, spec)
    ckpt = Checkpointer(run_dir / CKPT_NAME, model, opt, spec, state, cfg.checkpoint_every_s)
    while state.epoch < cfg.epochs:
        loss = train_one_epoch(ddp, opt, images, mean, std, spec, state, device=dev, bf16=bf16,
                               on_checkpoint=ckpt)
        val_loss = evaluate(model, val, mean, std, spec, device=dev, bf16=bf16)
        state.history.append({"epoch": state.epoch + 1, "step": state.global_step,
                              "train_loss": loss, "val_recon_loss": val_loss,
                              "train_time_s": state.train_time_s})
        state.epoch, state.step, state.loss_sum, state.loss_count = state.epoch + 1, 0, 0.0, 0
        ckpt(state, final=True)
        if distributed.is_main() and progress:
            print(f"{spec.run_id} epoch {state.epoch}/{cfg.epochs} loss {loss:.4f} "
                  f"val {val_loss:.4f}", flush=True)
    metrics = {}
    if distributed.is_main():
        metrics = _finish(model, spec, ds.manifest, images, val, mean, std, state, run_dir, dev, bf16)
    distributed.barrier()
    return metrics


def _finish(model: MaskedAutoencoder, spec: PretrainSpec, manifest: dict, images: torch.Tensor,
            val: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, state: State,
            run_dir: Path, dev: torch.device, bf16: bool) -> dict:
    """encoder.pt, the reconstruction arrays, measured speed, metrics.json (rank 0)."""
    import io

    buf = io.BytesIO()
    torch.save({"encoder": model.encoder_state_dict(), "spec_digest": spec.digest(),
                "spec": spec.canonical()}, buf)
    atomic_write_bytes(run_dir / ENCODER_FILE, buf.getvalue())
    rec = reconstructions(model, val[:RECON_IMAGES], mean, std, spec, dev)
    buf = io.BytesIO()
    np.savez(buf, **rec)
    atomic_write_bytes(run_dir / "reconstructions.npz", buf.getvalue())
    b = min(spec.pretrain.batch_size, images.shape[0])
    x = normalize(images[:b], mean, std).to(dev)
    t0, steps = time.perf_counter(), spec.pretrain.throughput_steps
    with torch.no_grad(), autocast(dev, bf16):
        for _ in range(steps):
            model(x, mask_ratio=spec.pretrain.mask_ratio)
    fwd_img_s = steps * b / (time.perf_counter() - t0)
    flops = mae_forward_flops(spec, manifest["image_size"], manifest["channels"])
    metrics = {
        "run_id": spec.run_id, "task": spec.task, "display": display_name(spec.size, spec.patch),
        "profile": spec.profile, "dataset": manifest["source"], "image_size": manifest["image_size"],
        "size": spec.size, "patch": spec.patch, "seed": spec.seed, "variant": spec.variant,
        "tokens": (manifest["image_size"] // spec.patch) ** 2, "target": spec.pretrain.target,
        "mask_ratio": spec.pretrain.mask_ratio,
        "params": sum(p.numel() for p in model.parameters()),
        "recon_loss": state.history[-1]["val_recon_loss"],
        "train_loss": state.history[-1]["train_loss"],
        "gflops_train": 3 * flops / 1e9, "gflops_infer": flops / 1e9,
        "train_img_per_s": state.global_step * spec.pretrain.batch_size / max(state.train_time_s, 1e-9),
        "infer_img_per_s": fwd_img_s, "steps": state.global_step, "train_s": state.train_time_s,
        "wall_s": state.wall_time_s, "precision": "bf16" if bf16 else "fp32", "device": dev.type,
        "spec_digest": spec.digest(),
    }
    atomic_write_json(run_dir / "curve.json", state.history)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics
