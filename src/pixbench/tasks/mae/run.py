"""`pixbench mae pretrain`: masked-autoencoder pre-training of one (size, patch, seed) cell.

The encoder is the classification ViT itself; fine-tuning, the linear probe and the scratch
baseline are classification runs (tasks/classify) whose spec names this run's encoder.pt.
"""

from __future__ import annotations

import io
import sys
import time

import numpy as np
import torch

from pixbench import distributed
from pixbench.config import Paths, PretrainSpec
from pixbench.data.augment import normalize
from pixbench.data.cache import load_cache
from pixbench.data.loader import Rows
from pixbench.data.subsets import balanced_subset
from pixbench.errors import UserError
from pixbench.eval.flops import mae_forward_flops
from pixbench.eval.measure import autocast
from pixbench.models.mae import DECODER_SIZES, MaskedAutoencoder
from pixbench.models.vit import SIZES, display_name
from pixbench.tasks.classify.engine import use_bf16
from pixbench.tasks.mae.engine import evaluate, reconstructions, train_one_epoch
from pixbench.tasks.optim import adamw
from pixbench.tasks.runner import Run, State

ENCODER_FILE = "encoder.pt"
RECON_IMAGES = 8  # fixed val images for the reconstruction figure
VAL_IMAGES = 1000  # fixed class-balanced val subset for the reconstruction loss


def build_mae(spec: PretrainSpec, manifest: dict) -> MaskedAutoencoder:
    torch.manual_seed(spec.seed)
    return MaskedAutoencoder(size=spec.size, patch=spec.patch, image_size=manifest["image_size"],
                             in_chans=manifest["channels"], target=spec.pretrain.target)


def spec_flops(spec: PretrainSpec, image_size: int, in_chans: int) -> float:
    """Forward FLOPs per image of this spec's MAE (eval/flops.py holds the formula)."""
    s, d = SIZES[spec.size], DECODER_SIZES[spec.size]
    return mae_forward_flops(tokens=(image_size // spec.patch) ** 2,
                             patch_dim=spec.patch ** 2 * in_chans, enc_dim=s.dim,
                             enc_depth=s.depth, mlp_ratio=s.mlp_ratio, dec_dim=d.dim,
                             dec_depth=d.depth, mask_ratio=spec.pretrain.mask_ratio)


def load_data(spec: PretrainSpec, paths: Paths):
    """(manifest, train images, val images, mean, std), checked before anything is written."""
    ds = load_cache(paths.cache_for(spec.profile))
    if ds.manifest.get("spec") != spec.data.model_dump():
        raise UserError(f"{paths.cache_for(spec.profile)}: cache was prepared for another data "
                        "spec; re-run `pixbench data prepare`")
    cfg, k = spec.pretrain, len(ds.classes)
    tr = balanced_subset(np.asarray(ds.train_labels), cfg.train_subset, k)
    images = Rows(ds.train_images, tr)  # (N, H, W, C) uint8, read per batch from the memory map
    val_idx = balanced_subset(np.asarray(ds.val_labels), VAL_IMAGES, k)
    val = torch.from_numpy(np.ascontiguousarray(ds.val_images[val_idx]))
    if images.shape[0] < cfg.batch_size:
        raise UserError(f"mae.pretrain.batch_size={cfg.batch_size} exceeds the "
                        f"{images.shape[0]} training images")
    return ds.manifest, images, val, torch.tensor(ds.mean), torch.tensor(ds.std)


def run(spec: PretrainSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
        progress: bool = True, loader_workers: int | None = None) -> dict:
    """Pre-train one cell; resumes from ckpt/last.pt; writes encoder.pt. `loader_workers`:
    input worker processes (a machine choice; None: data/loader.py's default)."""
    cfg = spec.pretrain
    r = Run.open(spec, paths, stale=stale, device=device, checkpoint_every_s=cfg.checkpoint_every_s)
    if not isinstance(r, Run):
        return r
    with r:
        manifest, images, val, mean, std = load_data(spec, paths)
        r.describe()
        dev, bf16 = r.device, use_bf16(cfg.precision, spec.size, r.device)
        model = build_mae(spec, manifest).to(dev)
        ddp = distributed.wrap(model, dev)
        opt = adamw(model, cfg.optim)
        state = r.restore(model=model, optimizer=opt)
        while state.epoch < cfg.epochs:
            loss = train_one_epoch(ddp, opt, images, mean, std, cfg, spec.seed, state, device=dev,
                                   bf16=bf16, on_step=r.tick, loader_workers=loader_workers)
            val_loss = evaluate(model, val, mean, std, cfg.mask_ratio, device=dev, bf16=bf16)
            state.history.append({"epoch": state.epoch + 1, "step": state.global_step,
                                  "train_loss": loss, "val_recon_loss": val_loss,
                                  "train_time_s": state.train_time_s})
            state.epoch, state.epoch_step = state.epoch + 1, 0
            state.take_mean_loss()
            r.save(state)
            if r.is_main and progress:
                print(f"{spec.run_id} epoch {state.epoch}/{cfg.epochs} loss {loss:.4f} "
                      f"val {val_loss:.4f}", file=sys.stderr, flush=True)
        metrics = (_outputs(r, model, manifest, images, val, mean, std, state, bf16)
                   if r.is_main else {})
        return r.finish(metrics, curve=state.history)


def _outputs(r: Run, model: MaskedAutoencoder, manifest: dict, images: Rows,
             val: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, state: State,
             bf16: bool) -> dict:
    """encoder.pt, the reconstruction arrays, measured speed; returns the metrics (rank 0)."""
    spec, dev = r.spec, r.device
    r.write_torch(ENCODER_FILE, {"encoder": model.encoder_state_dict(),
                                 "spec_digest": spec.digest(), "spec": spec.canonical()})
    rec = reconstructions(model, val[:RECON_IMAGES], mean, std, spec.pretrain.mask_ratio,
                          spec.pretrain.target, dev)
    buf = io.BytesIO()
    np.savez(buf, **rec)
    r.write_bytes("reconstructions.npz", buf.getvalue())
    b = min(spec.pretrain.batch_size, images.shape[0])
    x = normalize(images[:b], mean, std).to(dev)
    t0, steps = time.perf_counter(), spec.pretrain.throughput_steps
    with torch.no_grad(), autocast(dev, bf16):
        for _ in range(steps):
            model(x, mask_ratio=spec.pretrain.mask_ratio)
    fwd_img_s = steps * b / (time.perf_counter() - t0)
    flops = spec_flops(spec, manifest["image_size"], manifest["channels"])
    return {
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
