"""`pixbench mae pretrain`: masked-autoencoder pre-training of one (size, patch, seed) cell.

The encoder is the classification ViT itself; fine-tuning, the linear probe and the scratch
baseline are classification runs (tasks/classify) whose spec names this run's encoder.pt.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from pixbench.config import Paths, PretrainSpec
from pixbench.data.augment import normalize
from pixbench.data.cache import load_cache
from pixbench.data.loader import Rows
from pixbench.data.subsets import balanced_subset
from pixbench.errors import UserError
from pixbench.models.flops import mae_forward_flops
from pixbench.eval.measure import measure_inference
from pixbench.models.mae import DECODER_SIZES, MaskedAutoencoder
from pixbench.models.vit import SIZES, display_name
from pixbench.tasks.classify.engine import use_bf16
from pixbench.tasks.mae.engine import MaeBody, reconstructions
from pixbench.tasks.runner import Run, State
from pixbench.tasks.trainer import identity, run_task

ENCODER_FILE = "encoder.pt"
RECON_IMAGES = 8  # fixed val images for the reconstruction figure
VAL_IMAGES = 1000  # fixed class-balanced val subset for the reconstruction loss


def build_mae(spec: PretrainSpec, manifest: dict) -> MaskedAutoencoder:
    torch.manual_seed(spec.seed)
    return MaskedAutoencoder(size=spec.size, patch=spec.patch, image_size=manifest["image_size"],
                             in_chans=manifest["channels"], target=spec.pretrain.target)


def spec_flops(spec: PretrainSpec, image_size: int, in_chans: int) -> float:
    """Forward FLOPs per image of this spec's MAE (models/flops.py holds the formula)."""
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


class Pretraining(MaeBody):
    """An MAE pre-training cell: the engine's body plus its outputs."""

    def __init__(self, manifest: dict, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.manifest = manifest

    def outputs(self, run: Run, state: State) -> dict:
        """encoder.pt, the reconstruction arrays, measured speed; the metrics (rank 0)."""
        return _outputs(run, self, state) if run.is_main else {}


def run(spec: PretrainSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
        progress: bool = True, loader_workers: int | None = None) -> dict:
    """Pre-train one cell; resumes from ckpt/last.pt; writes encoder.pt. `loader_workers`:
    input worker processes (a machine choice; None: data/loader.py's default)."""
    cfg = spec.pretrain

    def build(r: Run) -> Pretraining:
        manifest, images, val, mean, std = load_data(spec, paths)
        model = build_mae(spec, manifest).to(r.device)
        return Pretraining(manifest, model, images, val, mean, std, cfg, spec.seed,
                           device=r.device, bf16=use_bf16(cfg.precision, spec.size, r.device),
                           loader_workers=loader_workers)

    return run_task(spec, paths, build, stale=stale, device=device, progress=progress,
                    checkpoint_every_s=cfg.checkpoint_every_s)


def _outputs(r: Run, body: Pretraining, state: State) -> dict:
    spec, dev, model, manifest = r.spec, r.device, body.model, body.manifest
    images, val, mean, std, bf16 = body.images, body.val, body.mean, body.std, body.bf16
    r.write_torch(ENCODER_FILE, {"encoder": model.encoder_state_dict(),
                                 "spec_digest": spec.digest(), "spec": spec.canonical()})
    rec = reconstructions(model, val[:RECON_IMAGES], mean, std, spec.pretrain.mask_ratio,
                          spec.pretrain.target, dev)
    buf = io.BytesIO()
    np.savez(buf, **rec)
    r.write_bytes("reconstructions.npz", buf.getvalue())
    b = min(spec.pretrain.batch_size, images.shape[0])
    x = normalize(images[:b], mean, std).to(dev)
    speed = measure_inference(model, x, bf16=bf16, steps=spec.pretrain.throughput_steps,
                              mask_ratio=spec.pretrain.mask_ratio)
    flops = spec_flops(spec, manifest["image_size"], manifest["channels"])
    return {
        **identity(r, state), "display": display_name(spec.size, spec.patch),
        "dataset": manifest["source"], "image_size": manifest["image_size"],
        "size": spec.size, "patch": spec.patch, "variant": spec.variant,
        "tokens": (manifest["image_size"] // spec.patch) ** 2, "target": spec.pretrain.target,
        "mask_ratio": spec.pretrain.mask_ratio,
        "params": sum(p.numel() for p in model.parameters()),
        "recon_loss": state.history[-1]["val_recon_loss"],
        "train_loss": state.history[-1]["train_loss"],
        "gflops_train": 3 * flops / 1e9, "gflops_infer": flops / 1e9,
        "train_img_per_s": state.global_step * spec.pretrain.batch_size / max(state.train_time_s, 1e-9),
        **speed, "precision": "bf16" if bf16 else "fp32",
    }
