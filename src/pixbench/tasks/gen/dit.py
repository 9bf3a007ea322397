"""`pixbench dit train`: a class-conditional DiT on the tokenizer's cached latents.

Epsilon prediction on diffusers' DDPM schedule, AdamW, an EMA of the weights (what samples
use), one checkpoint path (`ckpt/last.pt`: model, EMA, optimiser, state) and batches and noise
drawn from (seed, step) alone, so a resumed run ends where an uninterrupted one would. With
`curve_every_steps`, FID (FeatNet) of a few EMA samples is measured along the way.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import torch
from torch import nn

from pixbench.config import Paths
from pixbench.errors import UserError
from pixbench.genconfig import DitSpec
from pixbench.runio import (CKPT_NAME, atomic_write_bytes, atomic_write_json, describe_run,
                            load_checkpoint, save_checkpoint)
from pixbench.tasks.classify import lr_at, open_run_dir, param_groups, pick_device, step_seed
from pixbench.tasks.vq import batch_indices

EMA_FILE = "ema.pt"


@dataclasses.dataclass
class DitState:
    step: int = 0
    train_time_s: float = 0.0
    history: list = dataclasses.field(default_factory=list)


def build_model(spec: DitSpec, latent_shape: list[int], num_classes: int) -> nn.Module:
    """The one place config becomes DiT kwargs; seeded so init is a function of the seed."""
    from pixbench.models.dit import build_dit

    torch.manual_seed(spec.seed)
    c, h, _ = latent_shape
    return build_dit(spec.size, spec.patch, input_size=h, in_channels=c, num_classes=num_classes,
                     pos_embed=spec.dit.pos_embed, class_dropout_prob=spec.dit.class_dropout)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)


def _restore(path: Path, spec: DitSpec, model, ema, opt) -> DitState:
    if not path.exists():
        return DitState()
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("spec_digest") != spec.digest():
        raise UserError(f"{path}: not a checkpoint of this DiT spec; pass --stale restart")
    try:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: does not fit this model ({str(exc).splitlines()[0]})") from None
    return DitState(**ckpt["state"])


def train_steps(model, ema, opt, sched, latents: torch.Tensor, labels: torch.Tensor,
                spec: DitSpec, state: DitState, until: int, device: torch.device,
                on_save) -> float:
    """Train from state.step to `until`; returns the mean loss of those steps."""
    from pixbench.gen.diffusion import diffusion_loss

    cfg = spec.dit
    per_epoch = max(1, latents.shape[0] // cfg.batch_size)
    warmup = int(cfg.optim.warmup_epochs * per_epoch)
    peak = cfg.optim.lr * cfg.batch_size / cfg.optim.lr_ref_batch
    model.train()
    t0, losses = time.perf_counter() - state.train_time_s, []
    while state.step < until:
        idx = batch_indices(latents.shape[0], cfg.batch_size, spec.seed, state.step)
        x0, y = latents[idx].to(device), labels[idx].to(device)
        gen = torch.Generator(device="cpu").manual_seed(step_seed(spec.seed + 1, state.step))
        for g in opt.param_groups:
            g["lr"] = lr_at(state.step, cfg.steps, warmup, peak, cfg.optim.min_lr_ratio)
        loss = diffusion_loss(model, x0, y, sched, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        update_ema(ema, model, cfg.ema_decay)
        state.step += 1
        losses.append(loss.detach())
        state.train_time_s = time.perf_counter() - t0
        on_save(final=False)
    return float(torch.stack(losses).mean()) if losses else float("nan")


def run(spec: DitSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
        progress: bool = True) -> dict:
    """Train one (size, patch, seed) DiT cell; resumes from ckpt/last.pt; writes ema.pt."""
    from pixbench.gen.diffusion import make_train_scheduler
    from pixbench.tasks.latents import load_latents

    run_dir = paths.run_dir(spec.profile, spec.run_id)
    done = open_run_dir(run_dir, spec, stale)
    if done is not None:
        return done
    dev = pick_device(device)
    latents, labels, man = load_latents(paths, spec.profile, spec.tokenizer, "train")
    latents = latents * man["scale_factor"]  # (N, c, h, w), unit variance
    cfg = spec.dit
    if latents.shape[0] < cfg.batch_size:
        raise UserError(f"dit.batch_size={cfg.batch_size} exceeds the {latents.shape[0]} latents")
    describe_run(run_dir, spec, spec.seed, str(dev))
    model = build_model(spec, man["latent_shape"], man["num_classes"]).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                            betas=cfg.optim.betas)
    state = _restore(run_dir / CKPT_NAME, spec, model, ema, opt)
    sched = make_train_scheduler(cfg.num_train_timesteps, cfg.beta_schedule)
    curve = make_curve_probe(spec, paths) if cfg.curve_every_steps else None
    last = [time.monotonic()]

    def save(final: bool) -> None:
        if final or time.monotonic() - last[0] >= cfg.checkpoint_every_s:
            save_checkpoint(run_dir / CKPT_NAME, {
                "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "state": dataclasses.asdict(state), "spec_digest": spec.digest(),
                "spec": spec.canonical(), "torch": torch.__version__})
            last[0] = time.monotonic()

    every = cfg.curve_every_steps or cfg.steps
    while state.step < cfg.steps:
        until = min(cfg.steps, (state.step // every + 1) * every)
        loss = train_steps(model, ema, opt, sched, latents, labels, spec, state, until, dev, save)
        row = {"step": state.step, "train_loss": loss, "train_time_s": state.train_time_s}
        if curve is not None:
            row["fid_featnet"] = curve(ema, state.step)
        state.history.append(row)
        save(final=True)
        if progress:
            print(f"{spec.run_id} step {state.step}/{cfg.steps} loss {loss:.4f}"
                  + (f" fid {row['fid_featnet']:.2f}" if "fid_featnet" in row else ""), flush=True)
    return _finish(spec, run_dir, model, ema, man, state, dev)


def _finish(spec: DitSpec, run_dir: Path, model: nn.Module, ema: nn.Module, man: dict,
            state: DitState, dev: torch.device) -> dict:
    """ema.pt (what sampling loads), curve.json and metrics.json, each written atomically."""
    import io

    from pixbench.models.dit import dit_display_name, dit_gflops_per_step

    buf = io.BytesIO()
    torch.save({"ema": ema.state_dict(), "latent_shape": man["latent_shape"],
                "num_classes": man["num_classes"], "spec_digest": spec.digest(),
                "spec": spec.canonical()}, buf)
    atomic_write_bytes(run_dir / EMA_FILE, buf.getvalue())
    c, h, _ = man["latent_shape"]
    cfg = spec.dit
    metrics = {"run_id": spec.run_id, "task": "dit", "profile": spec.profile, "size": spec.size,
               "patch": spec.patch, "seed": spec.seed, "display": dit_display_name(spec.size, spec.patch),
               "tokens": (h // spec.patch) ** 2, "pos_embed": cfg.pos_embed,
               "params": sum(p.numel() for p in model.parameters()),
               "gflops_per_step": dit_gflops_per_step(spec.size, spec.patch, h, c),
               "steps": state.step, "train_loss": state.history[-1]["train_loss"],
               "train_s": state.train_time_s,
               "train_img_per_s": state.step * cfg.batch_size / max(state.train_time_s, 1e-9),
               "device": dev.type, "spec_digest": spec.digest()}
    atomic_write_json(run_dir / "curve.json", state.history)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


def make_curve_probe(spec: DitSpec, paths: Paths):
    """FID (FeatNet) of `curve_samples` EMA samples with the profile's sampler, for the
    FID-vs-step curve (the probe's settings are part of the spec: they shape curve.json)."""
    from pixbench.tasks.dit_eval import draw_samples, sampling_context, score_samples

    ctx = sampling_context(paths, spec.profile, tokenizer=spec.tokenizer, featnet=spec.featnet,
                           sample=spec.sample, fid=spec.fid)

    def probe(ema: nn.Module, step: int) -> float:
        images, _ = draw_samples(ema, ctx, n=spec.dit.curve_samples, seed=spec.seed)
        return score_samples(images, ctx, full=False)["fid_featnet"]

    return probe
