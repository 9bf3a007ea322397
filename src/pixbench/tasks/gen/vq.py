"""`pixbench vq train`: train (or import) the VQGAN tokenizer of the generation track.

The run dir `runs/{profile}/vq-s{seed}/` holds spec.json, manifest.json, ckpt/last.pt (the
runner's one checkpoint: generator with its code ages, discriminator, both optimisers, and the
State with the curve window and restart count, so a resume is bitwise), `tokenizer/` (the
diffusers folder every later stage loads), curve.json and metrics.json.

Data parallel: every rank trains on its shard of the global batch drawn from (seed, step);
DDP averages the generator's and the discriminator's gradients, the discriminator's batch norm
uses global-batch statistics (syncbn), taming's adaptive GAN weight is computed from the
rank-averaged gradients, and dead-code restarts read the gathered code indices and encoder
outputs with one generator seeded from (seed, step), so every rank restarts the same codes to
the same vectors and the codebooks never drift apart.
"""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from pixbench import distributed
from pixbench.config import Paths, VQSpec
from pixbench.models.vqgan import (PatchDiscriminator, build_vqmodel, hinge_d_loss,
                                   restart_dead_codes, vq_forward)
from pixbench.tasks.gen.data import gen_cache, to_unit
from pixbench.tasks.gen.parallel import check_divisible, rank_mean_tensor
from pixbench.tasks.gen.syncbn import sync_batchnorm
from pixbench.tasks.gen.tokenizer import TOKENIZER_DIR, import_pretrained, save_tokenizer
from pixbench.tasks.runner import Run, State
from pixbench.tasks.trainer import Body, Schedule, identity, run_task
from pixbench.rng import batch_indices, generator

CURVE_EVERY = 50  # steps per curve row (the mean of the window's per-step values)


class VQGenerator(nn.Module):
    """The VQModel plus the step each code was last chosen (a buffer, so the runner's
    checkpoint holds it); forward is one `vq_forward`, so DDP can wrap it."""

    def __init__(self, vq: nn.Module, codebook_size: int) -> None:
        super().__init__()
        self.vq = vq
        self.register_buffer("last_used", torch.zeros(codebook_size, dtype=torch.long))  # (K,)

    def forward(self, x: torch.Tensor):
        return vq_forward(self.vq, x)  # rec (N, C, H, W), vq loss, idx (N, h, w), z (N, c, h, w)


class VQTrainer:
    """The generator and discriminator (DDP-wrapped when there are several ranks) and their
    Adam optimisers."""

    def __init__(self, spec: VQSpec, channels: int, device: torch.device) -> None:
        cfg = spec.vq
        self.spec = spec
        torch.manual_seed(spec.seed)  # init is a function of the seed
        vq = build_vqmodel(in_channels=channels, downsample=cfg.downsample,
                           base_channels=cfg.base_channels, layers_per_block=cfg.layers_per_block,
                           mid_attention=cfg.mid_attention, latent_channels=cfg.latent_channels,
                           codebook_size=cfg.codebook_size, commitment=cfg.commitment,
                           sample_size=spec.data.image_size)
        self.gen = VQGenerator(vq, cfg.codebook_size).to(device)
        self.disc = sync_batchnorm(PatchDiscriminator(in_channels=channels,
                                                      channels=cfg.disc_channels,
                                                      layers=cfg.disc_layers)).to(device)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.gen_ddp = distributed.wrap(self.gen, device)
        self.disc_ddp = distributed.wrap(self.disc, device)

    @property
    def model(self) -> nn.Module:
        return self.gen.vq

    def modules(self) -> dict:
        return {"generator": self.gen, "discriminator": self.disc, "opt_g": self.opt_g,
                "opt_d": self.opt_d}


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """taming's calculate_adaptive_lambda (Esser et al. 2021, eq. 7) on the global batch: the
    two gradients at the decoder's last layer are averaged over ranks before their norms (the
    ratio of norms of shard gradients would differ per rank and from one process)."""
    rec_grad = rank_mean_tensor(torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0])
    g_grad = rank_mean_tensor(torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0])
    w = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return w.clamp(0.0, 1e4).detach() * scale


def train_step(tr: VQTrainer, x: torch.Tensor, step: int, gen: torch.Generator) -> dict:
    """One generator step (L1 + VQ + adaptive hinge GAN after the warm-up), one
    discriminator step, then dead-code restarts. x (n, C, H, W) in [-1, 1]: this rank's shard.
    Returns the step's values, averaged over ranks."""
    cfg = tr.spec.vq
    gan = cfg.disc_weight > 0 and step >= cfg.disc_start_step
    rec, vq_loss, idx, z = tr.gen_ddp(x)
    rec_loss = (x - rec).abs().mean()
    loss, d_w = rec_loss + vq_loss, 0.0
    if gan:
        tr.disc.eval()  # generator pass: don't update BatchNorm stats on fakes twice
        g_loss = -tr.disc(rec).mean()  # unwrapped: its gradients are discarded below
        w = adaptive_weight(rec_loss, g_loss, tr.model.decoder.conv_out.weight, cfg.disc_weight)
        loss, d_w = loss + w * g_loss, float(w)
    tr.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    tr.opt_g.step()
    d_loss = torch.zeros((), device=x.device)
    if gan:
        tr.disc.train()
        d_loss = hinge_d_loss(tr.disc_ddp(x), tr.disc_ddp(rec.detach()))
        tr.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        tr.opt_d.step()
    # the global batch's codes and encoder outputs: the same restarts on every rank
    n = restart_dead_codes(tr.model.quantize.embedding.weight.data, tr.gen.last_used,
                           distributed.gather_rows(idx), distributed.gather_rows(z.detach()),
                           step, cfg.dead_code_steps, gen)
    # tensors: the trainer averages them over ranks at its next sync; the rest is global
    return {"rec_l1": rec_loss.detach(), "vq": vq_loss.detach(), "d_loss": d_loss.detach(),
            "d_weight": d_w, "restarts": n}


class VQBody(Body):
    """The tokenizer's training (the trainer's body): one generator and one discriminator step
    on the global batch drawn from (seed, step); a curve row every CURVE_EVERY steps holds the
    window's mean of every per-step value. The restart count lives in the State."""

    mean_over_ranks = True

    def __init__(self, tr: VQTrainer, images: np.ndarray, device: torch.device) -> None:
        self.tr, self.images, self.device = tr, images, device
        self.schedule = Schedule(tr.spec.vq.steps, row_every=CURVE_EVERY)

    def modules(self) -> dict:
        return self.tr.modules()

    def start(self, state: State) -> None:
        self.tr.gen.train()

    def step(self, state: State) -> dict:
        cfg, spec, step = self.tr.spec.vq, self.tr.spec, state.global_step
        idx = distributed.shard(batch_indices(self.images.shape[0], cfg.batch_size, spec.seed, step))
        x = to_unit(self.images[idx.numpy()]).to(self.device)  # (B / world, C, H, W)
        out = train_step(self.tr, x, step, generator(spec.seed + 1, step))
        state.extra["restarts"] = state.extra.get("restarts", 0) + out["restarts"]
        return out

    def row(self, state: State, train_loss: float, end: bool) -> dict:
        row = {k: float(np.mean([w[k] for w in state.window])) for k in state.window[0]}
        return {"step": state.global_step, **row, "train_time_s": state.train_time_s}

    def progress(self, row: dict) -> str:
        return f"l1 {row['rec_l1']:.4f} vq {row['vq']:.4f} d {row['d_loss']:.3f}"

    def outputs(self, r: Run, state: State) -> dict:
        if r.is_main:
            save_tokenizer(self.tr.model.cpu(), r.dir / TOKENIZER_DIR, r.spec)
        return _metrics(r, self.tr.model, state)


class Imported(Body):
    """The pretrained tokenizer (vq.pretrained) instead of a trained one: no steps."""

    schedule = Schedule(0)  # curve.json: [] (as a trained one's, with no rows)

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def outputs(self, r: Run, state: State) -> dict:
        if r.is_main:
            save_tokenizer(self.model.cpu(), r.dir / TOKENIZER_DIR, r.spec)
        return _metrics(r, self.model, state)


def run(spec: VQSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
        progress: bool = True) -> dict:
    """Train one tokenizer (or import the pretrained one) and save its diffusers folder."""

    def build(r: Run) -> Body:
        ds = gen_cache(paths, spec.profile, spec.data.model_dump())
        if spec.vq.pretrained is not None:
            return Imported(import_pretrained(spec.vq.pretrained, paths, spec.vq, ds.channels))
        check_divisible(spec.vq.batch_size, "vq.batch_size")
        return VQBody(VQTrainer(spec, ds.channels, r.device), np.asarray(ds.train_images),
                      r.device)

    return run_task(spec, paths, build, stale=stale, device=device, progress=progress,
                    checkpoint_every_s=spec.vq.checkpoint_every_s)


def _metrics(r: Run, model: nn.Module, state: State) -> dict:
    spec, cfg = r.spec, r.spec.vq
    return {**identity(r, state), "pretrained": cfg.pretrained is not None, "downsample": cfg.downsample,
            "latent_channels": cfg.latent_channels, "codebook_size": cfg.codebook_size,
            "latent_side": spec.data.image_size // cfg.downsample,
            "params": sum(p.numel() for p in model.parameters()),
            "code_restarts": state.extra.get("restarts", 0),
            "train_img_per_s": state.global_step * cfg.batch_size / max(state.train_time_s, 1e-9),
            "final_l1": state.history[-1]["rec_l1"] if state.history else None}
