"""Diffusion training loss and sampling as a thin layer over diffusers' schedulers.

The noise schedule is DiT's (Peebles & Xie 2023, which takes it from ADM, Dhariwal & Nichol 2021):
1000 steps, betas linear from 1e-4 to 0.02, epsilon prediction. Schedules are never hand-written
here; `_schedule_config` is the one place the training (DDPM) and sampling (DDIM/DDPM) schedulers
get their betas from, so the two always agree.

Sampling choices, read off diffusers 0.42 `scheduling_ddim.py` / `scheduling_ddpm.py`:
- `clip_sample=False`: latents are not confined to [-1, 1] as pixels are;
- `set_alpha_to_one=False`: DDIM's last step lands on alpha_bar(t=0), the least noisy level the
  model was trained on, instead of an untrained alpha_bar=1;
- `timestep_spacing="trailing"` (steps_offset unused): the first step is t=T-1, pure noise as
  sampled, where "leading" would start denoising noise at t=T-T/steps (Lin et al. 2024, "Common
  Diffusion Noise Schedules and Sample Steps are Flawed", Table 2). DDIM's `step` finds the
  previous timestep as `t - T // steps`, which matches the trailing grid only when `steps`
  divides T, so DDIM refuses other step counts (DDPM looks the previous timestep up instead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    import diffusers

Sampler = Literal["ddim", "ddpm"]


def _schedule_config(num_train_timesteps: int, beta_schedule: str) -> dict:
    """Scheduler kwargs shared by training and sampling.

    For "linear" the betas are rescaled by 1000 / num_train_timesteps, so a shorter chain keeps the
    same total noise (ADM/DiT `get_named_beta_schedule("linear", T)`); at T=1000 it is 1e-4..0.02.
    """
    scale = 1000 / num_train_timesteps if beta_schedule == "linear" else 1.0
    if scale * 0.02 >= 1:
        raise ValueError(f"num_train_timesteps {num_train_timesteps} too small for linear betas")
    return dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                beta_start=scale * 1e-4, beta_end=scale * 0.02, prediction_type="epsilon",
                clip_sample=False, timestep_spacing="trailing")


def make_train_scheduler(num_train_timesteps: int = 1000,
                         beta_schedule: str = "linear") -> diffusers.DDPMScheduler:
    """DDPM scheduler for `add_noise` in training (fixed-small posterior variance if sampled)."""
    from diffusers import DDPMScheduler  # lazy: diffusers imports in seconds

    return DDPMScheduler(**_schedule_config(num_train_timesteps, beta_schedule),
                         variance_type="fixed_small")


def diffusion_loss(model: nn.Module, x0: torch.Tensor, y: torch.Tensor,
                   scheduler: diffusers.DDPMScheduler, generator: torch.Generator, *,
                   t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                   force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Simple DDPM loss (Ho et al. 2020, Eq. 14): MSE between true and predicted eps, mean over all.

    x0: (N, C, H, W) clean latents, y: (N,) labels. t ~ U{0..T-1} and eps ~ N(0, I) are drawn from
    `generator` (on its device, then moved) unless given; the same generator drives the model's
    label dropout, so one seed fixes the whole step; `force_drop_ids` (N,) (1 = drop) replaces
    that dropout draw (data parallel: the global batch's drops, drawn once, sliced per rank).
    With learned-sigma models only the eps channels are trained (no variational-bound term).
    """
    n, c = x0.shape[:2]
    if t is None:
        t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator,
                          device=generator.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=generator.device,
                            dtype=x0.dtype)
    t, noise = t.to(x0.device), noise.to(x0.device)
    x_t = scheduler.add_noise(x0, noise, t)  # (N, C, H, W)
    pred = model(x_t, t, y, force_drop_ids=force_drop_ids, generator=generator)  # (N, C_out, H, W)
    return F.mse_loss(pred[:, :c].float(), noise.float())


def make_sample_scheduler(sampler: Sampler, *, steps: int, num_train_timesteps: int = 1000,
                          beta_schedule: str = "linear") -> diffusers.SchedulerMixin:
    """DDIM or DDPM scheduler with the training betas, timesteps set for `steps` steps."""
    from diffusers import DDIMScheduler, DDPMScheduler  # lazy: diffusers imports in seconds

    config = _schedule_config(num_train_timesteps, beta_schedule)
    if sampler == "ddim":
        if not 1 <= steps <= num_train_timesteps or num_train_timesteps % steps:
            raise ValueError(f"DDIM steps {steps} must divide num_train_timesteps "
                             f"{num_train_timesteps} (diffusers' DDIM steps back by T // steps)")
        scheduler = DDIMScheduler(**config, set_alpha_to_one=False)
    elif sampler == "ddpm":
        scheduler = DDPMScheduler(**config, variance_type="fixed_small")
    else:
        raise ValueError(f"unknown sampler {sampler!r}; known: ddim, ddpm")
    scheduler.set_timesteps(steps)
    return scheduler


@torch.no_grad()
def sample(model: nn.Module, labels: torch.Tensor, *, shape: tuple[int, int, int], steps: int,
           cfg_scale: float, generator: torch.Generator, sampler: Sampler = "ddim",
           eta: float = 0.0, num_train_timesteps: int = 1000,
           beta_schedule: str = "linear") -> torch.Tensor:
    """Generate latents (N, C, H, W) for `labels` (N,) from `generator` noise, `shape` = (C, H, W).

    Runs the model in eval mode (restoring its mode after) without gradients. cfg_scale != 1 uses
    `model.forward_with_cfg` (null label = `model.num_classes`); cfg_scale == 1 runs the
    conditional model alone. `eta` is DDIM's noise weight (0 = deterministic); DDPM takes none.
    The same generator state gives the same latents.
    """
    if sampler == "ddpm" and eta != 0.0:
        raise ValueError("eta applies to DDIM only; DDPM always adds its posterior noise")
    scheduler = make_sample_scheduler(sampler, steps=steps, num_train_timesteps=num_train_timesteps,
                                      beta_schedule=beta_schedule)
    n, device = labels.shape[0], labels.device
    x = torch.randn((n, *shape), generator=generator, device=generator.device).to(device)
    x = x * scheduler.init_noise_sigma  # (N, C, H, W)
    step_kwargs = {"eta": eta} if sampler == "ddim" else {}
    was_training = model.training
    model.eval()
    try:
        for t in scheduler.timesteps:
            t_batch = t.expand(n).to(device)  # (N,)
            if cfg_scale != 1.0:
                eps = model.forward_with_cfg(x, t_batch, labels, cfg_scale)
            else:
                eps = model(x, t_batch, labels)
            eps = eps[:, :shape[0]]  # drop learned-variance channels, if any
            x = scheduler.step(eps, t, x, generator=generator, **step_kwargs).prev_sample
    finally:
        model.train(was_training)
    return x
