"""MAE pre-training's engine (He et al. 2022's engine_pretrain split); the trainer runs its steps."""

from __future__ import annotations


import numpy as np
import torch

from pixbench import distributed
from pixbench.data.augment import normalize
from pixbench.data.loader import Rows, epoch_batches
from pixbench.eval.measure import autocast
from pixbench.models.mae import MaskedAutoencoder
from pixbench.tasks.optim import adamw, clip_and_step, lr_at, peak_lr, set_lr
from pixbench.tasks.runner import State
from pixbench.tasks.trainer import Body, Schedule


class MaeBody(Body):
    """MAE pre-training (the trainer's body): masked MSE, AdamW on the recipe's schedule; a
    curve row per epoch with the fixed-mask val reconstruction loss."""

    def __init__(self, model: MaskedAutoencoder, images: Rows, val: torch.Tensor,
                 mean: torch.Tensor, std: torch.Tensor, cfg, seed: int, *, device: torch.device,
                 bf16: bool, loader_workers: int | None = None) -> None:
        self.model, self.ddp = model, distributed.wrap(model, device)
        self.opt = adamw(model, cfg.optim)
        self.images, self.val, self.mean, self.std, self.cfg, self.seed = (images, val, mean,
                                                                           std, cfg, seed)
        self.device, self.bf16, self.loader_workers = device, bf16, loader_workers
        per_epoch = images.shape[0] // cfg.batch_size
        self.schedule = Schedule(per_epoch * cfg.epochs, per_epoch)
        self.warmup = round(cfg.optim.warmup_epochs * per_epoch)
        self.peak = peak_lr(cfg.optim, cfg.batch_size)
        self.tokens = (images.shape[1] // model.patch) ** 2
        self.batches = None

    def modules(self) -> dict:
        return {"model": self.model, "optimizer": self.opt}

    def start(self, state: State) -> None:
        """This rank's shard of each global batch and of its masking noise (drawn for the whole
        batch after the augmentation, from the same generator): N ranks mask as one does."""
        self.batches = epoch_batches(self.images, None, self.cfg, self.seed, state,
                                     mean=self.mean, std=self.std, device=self.device,
                                     workers=self.loader_workers, noise_tokens=self.tokens)
        self.ddp.train()

    def step(self, state: State) -> dict:
        cfg = self.cfg
        x, _, noise = next(self.batches).to(self.device, self.mean, self.std,
                                            cfg.augment)  # (B/W, C, H, W), (B/W, L)
        set_lr(self.opt, lr_at(state.global_step, self.schedule.steps, self.warmup, self.peak,
                               cfg.optim.min_lr_ratio))
        with autocast(self.device, self.bf16):
            loss, _, _ = self.ddp(x, mask_ratio=cfg.mask_ratio, noise=noise)
        clip_and_step(self.ddp, self.opt, loss, cfg.optim.grad_clip)
        return {"loss": loss.detach()}

    def row(self, state: State, train_loss: float, end: bool) -> dict:
        self.batches = None  # the epoch's input workers end before the evaluation
        val_loss = evaluate(self.model, self.val, self.mean, self.std, self.cfg.mask_ratio,
                            device=self.device, bf16=self.bf16)
        return {"epoch": state.epoch + 1, "step": state.global_step, "train_loss": train_loss,
                "val_recon_loss": val_loss, "train_time_s": state.train_time_s}

    def progress(self, row: dict) -> str:
        return f"loss {row['train_loss']:.4f} val {row['val_recon_loss']:.4f}"


@torch.no_grad()
def evaluate(model: MaskedAutoencoder, images: torch.Tensor, mean: torch.Tensor,
             std: torch.Tensor, mask_ratio: float, *, device: torch.device, bf16: bool,
             batch_size: int = 256) -> float:
    """Masked reconstruction loss on val images with fixed masks (seed 0): comparable across
    runs and seeds."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(0)
    total, n = 0.0, images.shape[0]
    for i in range(0, n, batch_size):
        x = normalize(images[i:i + batch_size], mean, std).to(device)
        with autocast(device, bf16):
            loss, _, _ = model(x, mask_ratio=mask_ratio, generator=gen)
        total += loss.item() * x.shape[0]
    model.train()
    return total / n


@torch.no_grad()
def reconstructions(model: MaskedAutoencoder, images: torch.Tensor, mean: torch.Tensor,
                    std: torch.Tensor, mask_ratio: float, target: str, device: torch.device) -> dict:
    """uint8 (K, H, W, C) masked inputs, reconstructions (visible tokens pasted back, as in
    MAE's demo) and originals for the report's figure."""
    model.eval()
    x = normalize(images, mean, std).to(device)  # (K, C, H, W)
    gen = torch.Generator(device=device).manual_seed(0)
    _, pred, mask = model(x, mask_ratio=mask_ratio, generator=gen)
    if target == "norm_pix":  # undo the per-token normalisation for display
        t = model.patchify(x)
        pred = pred * (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(dim=-1, keepdim=True)
    m = mask[..., None].expand_as(pred)  # (K, L, p*p*C)
    visible = model.unpatchify(model.patchify(x) * (1 - m))
    pasted = model.unpatchify(model.patchify(x) * (1 - m) + pred * m)

    def to_uint8(t: torch.Tensor) -> np.ndarray:
        t = t.cpu() * std[None, :, None, None] + mean[None, :, None, None]
        return (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    return {"masked": to_uint8(visible), "reconstruction": to_uint8(pasted),
            "original": images.numpy(), "mask": mask.cpu().numpy()}
