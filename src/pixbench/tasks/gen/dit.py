"""`pixbench dit train`: a class-conditional DiT on the tokenizer's cached latents.

Epsilon prediction on diffusers' DDPM schedule, AdamW, an EMA of the weights (what samples
use), on the task runner: one checkpoint (model, EMA, optimiser, and the State with the loss
sums of the current curve interval, so `train_loss` survives a kill), batches and noise drawn
from (seed, step) alone, so a resumed run ends where an uninterrupted one would. With
`curve_every_steps`, FID (FeatNet) of a few EMA samples is measured along the way.

Data parallel: every step draws the global batch's indices, timesteps, noise and label drops
from (seed, step) and each rank trains on its slice of them, so the recipe (global batch, lr)
and the result do not depend on the number of ranks.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pixbench import distributed
from pixbench.config import Paths
from pixbench.errors import UserError
from pixbench.eval.measure import autocast
from pixbench.models.diffusion import diffusion_loss, make_train_scheduler
from pixbench.models.dit import DIT_SIZES
from pixbench.config import DitSpec
from pixbench.tasks.gen.latents import NpyRows, load_latents
from pixbench.tasks.gen.parallel import check_divisible
from pixbench.tasks.gen.sampling import (EMA_FILE, build_dit_model, draw_samples, sampling_context,
                                         score_samples)
from pixbench.tasks.optim import adamw, clip_and_step, lr_at, peak_lr, set_lr
from pixbench.tasks.runner import Run, State
from pixbench.tasks.trainer import Body, Schedule, identity, run_task
from pixbench.rng import batch_indices, generator


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)


def step_noise(gen: torch.Generator, n: int, shape: torch.Size, num_timesteps: int,
               drop_prob: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The global batch's timesteps (n,), noise (n, c, h, w) and label drops (n,) (1 = drop;
    None without dropout), drawn in the order `diffusion_loss` and the DiT's label dropout
    would draw them from `gen` on one process, so one process trains exactly as before."""
    t = torch.randint(0, num_timesteps, (n,), generator=gen, device=gen.device)
    noise = torch.randn((n, *shape), generator=gen, device=gen.device)
    drop = None
    if drop_prob > 0:
        drop = (torch.rand((n,), generator=gen, device=gen.device) < drop_prob).long()
    return t, noise, drop


def use_bf16(precision: str, size: str, device: torch.device) -> bool:
    """The recipe's `dit.precision`; `auto` follows the classification rule
    (tasks/classify/engine.use_bf16): bf16 autocast on CUDA, on the CPU only from width 192."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or DIT_SIZES[size]["hidden_size"] >= 192


class DitBody(Body):
    """The DiT's training (the trainer's body): the model (DDP-wrapped when there are several
    ranks), its EMA, AdamW, the latents; a curve row every `curve_every_steps` with the FID of
    a few EMA samples when a probe is given.

    `latents` (N, c, h, w) float32 are the encoder's, unscaled, read a batch at a time from
    the file (load_latents rows=True): each step reads its rows and multiplies them by the
    manifest's scale factor, the same float32 product per element that scaling the whole
    array once gave, without the split (and a scaled copy of it) on every rank."""

    mean_over_ranks = True  # a step's loss is the global batch's

    def __init__(self, spec: DitSpec, latents: NpyRows, labels: NpyRows, man: dict,
                 device: torch.device, probe=None) -> None:
        cfg = spec.dit
        self.spec, self.device, self.latents, self.labels = spec, device, latents, labels
        self.man, self.probe = man, probe
        self.model = build_dit_model(spec, man["latent_shape"], man["num_classes"]).to(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = adamw(self.model, cfg.optim)
        self.ddp = distributed.wrap(self.model, device)
        self.sched = make_train_scheduler(cfg.num_train_timesteps, cfg.beta_schedule)
        per_epoch = max(1, latents.shape[0] // cfg.batch_size)
        self.warmup = int(cfg.optim.warmup_epochs * per_epoch)
        self.peak = peak_lr(cfg.optim, cfg.batch_size)
        self.bf16 = use_bf16(cfg.precision, spec.size, device)
        self.schedule = Schedule(cfg.steps, row_every=cfg.curve_every_steps or cfg.steps)

    def modules(self) -> dict:
        return {"model": self.model, "ema": self.ema, "optimizer": self.opt}

    def start(self, state: State) -> None:
        self.model.train()

    def step(self, state: State) -> dict:
        """One update on this rank's slice of the global batch drawn from (seed, step)."""
        spec, cfg, step = self.spec, self.spec.dit, state.global_step
        idx = batch_indices(self.latents.shape[0], cfg.batch_size, spec.seed, step)  # (B,)
        gen = generator(spec.seed + 1, step)
        drop_prob = cfg.class_dropout if self.model.training else 0.0
        t, noise, drop = step_noise(gen, cfg.batch_size, self.latents.shape[1:],
                                    cfg.num_train_timesteps, drop_prob)
        mine = distributed.shard(torch.arange(cfg.batch_size))  # this rank's slice of the batch
        x0 = self.latents[idx[mine]] * self.man["scale_factor"]  # (B / world, c, h, w)
        x0, y = x0.to(self.device), self.labels[idx[mine]].to(self.device)
        set_lr(self.opt, lr_at(step, cfg.steps, self.warmup, self.peak, cfg.optim.min_lr_ratio))
        with autocast(self.device, self.bf16):
            loss = diffusion_loss(self.ddp, x0, y, self.sched, gen, t=t[mine], noise=noise[mine],
                                  force_drop_ids=None if drop is None else drop[mine])
        clip_and_step(self.ddp, self.opt, loss, cfg.optim.grad_clip)
        update_ema(self.ema, self.model, cfg.ema_decay)
        return {"loss": loss.detach()}

    def row(self, state: State, train_loss: float, end: bool) -> dict:
        row = {"step": state.global_step, "train_loss": train_loss,
               "train_time_s": state.train_time_s}
        if self.probe is not None:
            row["fid_featnet"] = self.probe(self.ema, state.global_step)
        return row

    def progress(self, row: dict) -> str:
        fid = f" fid {row['fid_featnet']:.2f}" if "fid_featnet" in row else ""
        return f"loss {row['train_loss']:.4f}{fid}"

    def outputs(self, r: Run, state: State) -> dict:
        """ema.pt (what sampling loads), then the metrics."""
        from pixbench.models.dit import dit_display_name, dit_gflops_per_step

        spec, cfg, man = r.spec, r.spec.dit, self.man
        r.write_torch(EMA_FILE, {"ema": self.ema.state_dict(), "latent_shape": man["latent_shape"],
                                 "num_classes": man["num_classes"], "spec_digest": spec.digest(),
                                 "spec": spec.canonical()})
        c, h, _ = man["latent_shape"]
        return {**identity(r, state), "size": spec.size, "patch": spec.patch,
                "display": dit_display_name(spec.size, spec.patch),
                "tokens": (h // spec.patch) ** 2, "pos_embed": cfg.pos_embed,
                "params": sum(p.numel() for p in self.model.parameters()),
                "gflops_per_step": dit_gflops_per_step(spec.size, spec.patch, h, c),
                "train_loss": state.history[-1]["train_loss"],
                "train_img_per_s": state.global_step * cfg.batch_size
                / max(state.train_time_s, 1e-9),
                "precision": "bf16" if self.bf16 else "fp32"}


def run(spec: DitSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
        progress: bool = True) -> dict:
    """Train one (size, patch, seed) DiT cell; resumes from ckpt/last.pt; writes ema.pt."""
    cfg = spec.dit

    def build(r: Run) -> DitBody:
        # (N, c, h, w) row readers, unscaled: DitBody.step reads and scales each batch
        latents, labels, man = load_latents(paths, spec.profile, spec.tokenizer, "train",
                                            rows=True)
        if latents.shape[0] < cfg.batch_size:
            raise UserError(f"dit.batch_size={cfg.batch_size} exceeds the "
                            f"{latents.shape[0]} latents")
        check_divisible(cfg.batch_size, "dit.batch_size")
        probe = make_curve_probe(spec, paths, r.device) if cfg.curve_every_steps else None
        return DitBody(spec, latents, labels, man, r.device, probe)

    return run_task(spec, paths, build, stale=stale, device=device, progress=progress,
                    checkpoint_every_s=cfg.checkpoint_every_s)


def make_curve_probe(spec: DitSpec, paths: Paths, device: torch.device):
    """FID (FeatNet) of `curve_samples` EMA samples with the profile's sampler, for the
    FID-vs-step curve (the probe's settings are part of the spec: they shape curve.json).
    Sampling is sharded across ranks; every rank gets the score."""
    ctx = sampling_context(paths, spec.profile, tokenizer=spec.tokenizer, featnet=spec.featnet,
                           sample=spec.sample, fid=spec.fid, device=device)

    def probe(ema: nn.Module, step: int) -> float:
        images, _ = draw_samples(ema, ctx, n=spec.dit.curve_samples, seed=spec.seed)
        return score_samples(images, ctx, full=False)["fid_featnet"]

    return probe
