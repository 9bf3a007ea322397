"""`pixbench vq train`: train (or import) the VQGAN tokenizer of the generation track.

The run dir `runs/{profile}/vq-s{seed}/` holds spec.json, manifest.json, ckpt/last.pt
(generator, discriminator, both optimisers, code ages: resume is bitwise), `tokenizer/` (the
diffusers folder every later stage loads), curve.json and metrics.json.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pixbench.config import Paths
from pixbench.data.cache import CachedDataset, load_cache
from pixbench.errors import UserError
from pixbench.genconfig import VQSpec
from pixbench.models.vqgan import (PatchDiscriminator, adaptive_weight, build_vqmodel,
                                   hinge_d_loss, restart_dead_codes, vq_forward)
from pixbench.runio import (CKPT_NAME, atomic_write_json, describe_run, load_checkpoint,
                            save_checkpoint)
from pixbench.tasks.classify import open_run_dir, pick_device, step_seed

TOKENIZER_DIR = "tokenizer"


def gen_cache(paths: Paths, spec_profile: str, data_spec: dict) -> CachedDataset:
    """The generation track's own image cache; a cache of another data spec is an error."""
    where = paths.gen_cache_for(spec_profile)
    ds = load_cache(where)
    if ds.manifest.get("spec") != data_spec:
        raise UserError(f"{where}: cache was prepared for another data spec; re-run "
                        "`pixbench data prepare --gen`")
    return ds


def to_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1], the tokenizer's input range."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@dataclasses.dataclass
class VQState:
    step: int = 0
    train_time_s: float = 0.0
    restarts: int = 0
    history: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class VQTrainer:
    model: nn.Module
    disc: PatchDiscriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    last_used: torch.Tensor  # (K,) step each code was last chosen
    spec: VQSpec

    def state_dict(self, state: VQState) -> dict:
        return {"model": self.model.state_dict(), "disc": self.disc.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "last_used": self.last_used, "state": dataclasses.asdict(state),
                "spec_digest": self.spec.digest(), "spec": self.spec.canonical(),
                "torch": torch.__version__}

    def load(self, path: Path) -> VQState:
        if not path.exists():
            return VQState()
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, dict) or ckpt.get("spec_digest") != self.spec.digest():
            raise UserError(f"{path}: not a checkpoint of this tokenizer spec; pass --stale restart")
        try:
            self.model.load_state_dict(ckpt["model"])
            self.disc.load_state_dict(ckpt["disc"])
            self.opt_g.load_state_dict(ckpt["opt_g"])
            self.opt_d.load_state_dict(ckpt["opt_d"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"{path}: does not fit this tokenizer ({str(exc).splitlines()[0]})") from None
        self.last_used.copy_(ckpt["last_used"])
        return VQState(**ckpt["state"])


def build_trainer(spec: VQSpec, channels: int, device: torch.device) -> VQTrainer:
    cfg = spec.vq
    torch.manual_seed(spec.seed)
    model = build_vqmodel(in_channels=channels, downsample=cfg.downsample,
                          base_channels=cfg.base_channels, layers_per_block=cfg.layers_per_block,
                          mid_attention=cfg.mid_attention, latent_channels=cfg.latent_channels,
                          codebook_size=cfg.codebook_size, commitment=cfg.commitment,
                          sample_size=spec.data.image_size).to(device)
    disc = PatchDiscriminator(in_channels=channels, channels=cfg.disc_channels,
                              layers=cfg.disc_layers).to(device)
    opt_g = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=cfg.betas)
    last_used = torch.zeros(cfg.codebook_size, dtype=torch.long)
    return VQTrainer(model, disc, opt_g, opt_d, last_used, spec)


def train_step(tr: VQTrainer, x: torch.Tensor, step: int, gen: torch.Generator) -> dict:
    """One generator step (L1 + VQ + adaptive hinge GAN after the warm-up), one
    discriminator step, then dead-code restarts. x (N, C, H, W) in [-1, 1]."""
    cfg = tr.spec.vq
    gan = cfg.disc_weight > 0 and step >= cfg.disc_start_step
    rec, vq_loss, idx, z = vq_forward(tr.model, x)
    rec_loss = (x - rec).abs().mean()
    loss, d_w = rec_loss + vq_loss, 0.0
    if gan:
        tr.disc.eval()  # generator pass: don't update BatchNorm stats on fakes twice
        g_loss = -tr.disc(rec).mean()
        w = adaptive_weight(rec_loss, g_loss, tr.model.decoder.conv_out.weight, cfg.disc_weight)
        loss, d_w = loss + w * g_loss, float(w)
    tr.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    tr.opt_g.step()
    d_loss = 0.0
    if gan:
        tr.disc.train()
        d = hinge_d_loss(tr.disc(x), tr.disc(rec.detach()))
        tr.opt_d.zero_grad(set_to_none=True)
        d.backward()
        tr.opt_d.step()
        d_loss = float(d.detach())
    n = restart_dead_codes(tr.model.quantize.embedding.weight.data, tr.last_used, idx, z, step,
                           cfg.dead_code_steps, gen)
    return {"rec_l1": float(rec_loss.detach()), "vq": float(vq_loss.detach()), "d_loss": d_loss,
            "d_weight": d_w,
            "restarts": n}


def batch_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """A function of (seed, step) alone, so a resumed run draws the same batches."""
    g = torch.Generator().manual_seed(step_seed(seed, step))
    return torch.randint(0, n, (batch,), generator=g)


def train(tr: VQTrainer, images: np.ndarray, state: VQState, ckpt_path: Path,
          device: torch.device, progress: bool) -> VQState:
    cfg, spec = tr.spec.vq, tr.spec
    tr.model.train()
    last_save, t_start = time.monotonic(), time.perf_counter() - state.train_time_s
    window: list[dict] = []
    while state.step < cfg.steps:
        idx = batch_indices(images.shape[0], cfg.batch_size, spec.seed, state.step)
        x = to_unit(images[idx.numpy()]).to(device)
        gen = torch.Generator().manual_seed(step_seed(spec.seed + 1, state.step))
        out = train_step(tr, x, state.step, gen)
        state.restarts += out["restarts"]
        state.step += 1
        window.append(out)
        state.train_time_s = time.perf_counter() - t_start
        if state.step % 50 == 0 or state.step == cfg.steps:
            row = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            state.history.append({"step": state.step, **row, "train_time_s": state.train_time_s})
            window = []
            if progress:
                print(f"{spec.run_id} step {state.step}/{cfg.steps} l1 {row['rec_l1']:.4f} "
                      f"vq {row['vq']:.4f} d {row['d_loss']:.3f}", flush=True)
        if time.monotonic() - last_save >= cfg.checkpoint_every_s or state.step == cfg.steps:
            save_checkpoint(ckpt_path, tr.state_dict(state))
            last_save = time.monotonic()
    return state


def run(spec: VQSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
        progress: bool = True) -> dict:
    """Train one tokenizer (or import the pretrained one) and save its diffusers folder."""
    from pixbench.tasks.tokenizer import import_pretrained, save_tokenizer

    run_dir = paths.run_dir(spec.profile, spec.run_id)
    done = open_run_dir(run_dir, spec, stale)
    if done is not None:
        return done
    dev = pick_device(device)
    ds = gen_cache(paths, spec.profile, spec.data.model_dump())
    describe_run(run_dir, spec, spec.seed, str(dev))
    if spec.vq.pretrained is not None:
        model = import_pretrained(spec.vq.pretrained, paths, spec.vq, ds.channels)
        state = VQState()
    else:
        tr = build_trainer(spec, ds.channels, dev)
        state = tr.load(run_dir / CKPT_NAME)
        state = train(tr, np.asarray(ds.train_images), state, run_dir / CKPT_NAME, dev, progress)
        model = tr.model
    save_tokenizer(model.cpu(), run_dir / TOKENIZER_DIR, spec)
    metrics = {"run_id": spec.run_id, "task": "vq", "profile": spec.profile, "seed": spec.seed,
               "pretrained": spec.vq.pretrained is not None, "downsample": spec.vq.downsample,
               "latent_channels": spec.vq.latent_channels, "codebook_size": spec.vq.codebook_size,
               "latent_side": spec.data.image_size // spec.vq.downsample,
               "params": sum(p.numel() for p in model.parameters()), "steps": state.step,
               "train_s": state.train_time_s, "code_restarts": state.restarts,
               "train_img_per_s": state.step * spec.vq.batch_size / max(state.train_time_s, 1e-9),
               "final_l1": state.history[-1]["rec_l1"] if state.history else None,
               "device": dev.type, "spec_digest": spec.digest()}
    atomic_write_json(run_dir / "curve.json", state.history)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics
