"""Workloads of the pre-training and generation tracks: the MAE train step, DiT train and
sampling steps, the VQ tokenizer's encoder and the FID feature extractor.

Registered on import (workloads.py imports this module). Each step mirrors its task's code:
the MAE step is tasks/mae `MaeBody.step` (mask 0.75, "pix" target, AdamW with MAE's betas
and weight decay, grad clip 1.0); the DiT train step is tasks/gen/dit.py
`train_steps` (diffusion_loss on diffusers' DDPM schedule, AdamW, grad clip, EMA update); a DiT
sampling step is one `forward_with_cfg` (the conditional and null-label halves as one doubled
batch), as models/diffusion.py `sample` calls it; the tokenizer step is `encode` + `quantize` as
tasks/gen/tokenizer.py `encode_images` runs it; FID features are FeatNet's `features_and_logits`
on uint8 input, as the torch-fidelity extractor in eval/fidelity.py runs them.

FLOPs: MAE and DiT analytic (models/flops.py `mae_forward_flops`, models/dit.py
`dit_gflops_per_step`, attention counted; train = 3x forward). The convolutional tokenizer and
FeatNet: counted once at build time with torch.utils.flop_counter over one step (convolutions,
matmuls and SDPA; elementwise ops, norms and the codebook's cdist are not counted), so their
MFU is comparable in kind to the transformers'.

MAE encoder *inference* needs no workload of its own: `MaskedAutoencoder.encoder` is the
classification ViT (`vit(..., pool="avg")`), which `vit_infer` already times.
"""

from __future__ import annotations

from benchsuite.registry import Prepared, attention_context, register
from benchsuite.timing import sync

MAE_MASK_RATIO = 0.75  # params.yaml mae.pretrain
MAE_TARGET = "pix"  # the one target every patch size accepts (gray p=1 refuses norm_pix)
MAE_OPTIM = {"lr": 1e-3, "betas": (0.9, 0.95), "weight_decay": 0.05}
GRAD_CLIP = 1.0
DIT_OPTIM = {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.0}  # params.yaml dit.optim
DIT_CLASSES = 10
DIT_CLASS_DROPOUT = 0.1
DIT_EMA_DECAY = 0.995
CFG_SCALE = 2.0  # params.yaml sample.cfg_scale


def _params_m(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def _counted_flops(step, items: int) -> float:
    """FLOPs per item of one call of `step`, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / items


@register("mae_encoder")
def mae_encoder(*, size: str, patch: int, image_size: int, in_chans: int, batch: int,
                dtype: str, device: str, mask_ratio: float = MAE_MASK_RATIO) -> Prepared:
    """One MAE pre-training step: mask, encode the kept tokens, decode all, MSE on the removed
    ones, backward, grad clip, AdamW."""
    import torch
    from torch import nn

    from pixbench.eval.measure import autocast
    from pixbench.models.mae import MaskedAutoencoder
    from pixbench.models.flops import mae_forward_flops
    from pixbench.models.mae import DECODER_SIZES
    from pixbench.models.vit import SIZES
    from pixbench.tasks.optim import param_groups

    torch.manual_seed(0)
    model = MaskedAutoencoder(size=size, patch=patch, image_size=image_size, in_chans=in_chans,
                              target=MAE_TARGET).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, MAE_OPTIM["weight_decay"]), lr=MAE_OPTIM["lr"],
                            betas=MAE_OPTIM["betas"])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_chans, image_size, image_size, generator=gen).to(device)
    mask_gen = torch.Generator(device=device).manual_seed(1)
    dev, bf16 = torch.device(device), dtype == "bf16"

    def step() -> None:
        with autocast(dev, bf16), attention_context(device, dtype):
            loss, _, _ = model(x, mask_ratio=mask_ratio, generator=mask_gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        sync(device)

    tokens = (image_size // patch) ** 2
    enc, dec = SIZES[size], DECODER_SIZES[size]
    flops = mae_forward_flops(tokens=tokens, patch_dim=patch ** 2 * in_chans, enc_dim=enc.dim,
                              enc_depth=enc.depth, mlp_ratio=enc.mlp_ratio, dec_dim=dec.dim,
                              dec_depth=dec.depth, mask_ratio=mask_ratio)
    info = {"params_m": _params_m(model), "tokens": tokens,
            "encoder_tokens": int(tokens * (1 - mask_ratio)), "mask_ratio": mask_ratio,
            "target": MAE_TARGET}
    return Prepared(step, batch, 3 * flops, info)


def _dit(size, patch, latent, device):
    import torch

    from pixbench.models.dit import DIT_SIZES, build_dit

    c, h = latent
    torch.manual_seed(0)
    model = build_dit(size, patch, input_size=h, in_channels=c, num_classes=DIT_CLASSES,
                      pos_embed="learn", class_dropout_prob=DIT_CLASS_DROPOUT).to(device)
    d = DIT_SIZES[size]
    info = {"params_m": _params_m(model), "tokens": (h // patch) ** 2, "width": d["hidden_size"],
            "head_dim": d["hidden_size"] // d["num_heads"], "latent": f"{c}x{h}x{h}"}
    return model, info


def _dit_inputs(batch, latent, device):
    import torch

    c, h = latent
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, h, h, generator=gen)  # (B, C, H, W) latents, unit variance
    y = torch.randint(0, DIT_CLASSES, (batch,), generator=gen)  # (B,)
    return x.to(device), y.to(device)


def _dit_flops(size, patch, latent) -> float:
    from pixbench.models.dit import dit_gflops_per_step

    return dit_gflops_per_step(size, patch, latent[1], latent[0]) * 1e9


@register("dit_train")
def dit_train(*, size: str, patch: int, latent_channels: int, latent_size: int, batch: int,
              dtype: str, device: str) -> Prepared:
    """One DiT training step: noise at t ~ U{0..999}, predict eps, MSE, backward, grad clip,
    AdamW, EMA update, on (batch, latent_channels, latent_size, latent_size) latents."""
    import copy

    import torch
    from torch import nn

    from pixbench.eval.measure import autocast
    from pixbench.models.diffusion import diffusion_loss, make_train_scheduler
    from pixbench.tasks.gen.dit import update_ema
    from pixbench.tasks.optim import param_groups

    latent = (latent_channels, latent_size)
    model, info = _dit(size, patch, latent, device)
    model.train()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(param_groups(model, DIT_OPTIM["weight_decay"]), lr=DIT_OPTIM["lr"],
                            betas=DIT_OPTIM["betas"])
    sched = make_train_scheduler()
    x0, y = _dit_inputs(batch, latent, device)
    gen = torch.Generator().manual_seed(2)  # cpu, as the task's: t and eps are drawn there
    dev, bf16 = torch.device(device), dtype == "bf16"

    def step() -> None:
        with autocast(dev, bf16), attention_context(device, dtype):
            loss = diffusion_loss(model, x0, y, sched, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        update_ema(ema, model, DIT_EMA_DECAY)
        sync(device)

    return Prepared(step, batch, 3 * _dit_flops(size, patch, latent), info)


@register("dit_infer")
def dit_infer(*, size: str, patch: int, latent_channels: int, latent_size: int, batch: int,
              dtype: str, device: str, cfg_scale: float = CFG_SCALE) -> Prepared:
    """One denoising forward for `batch` images; with guidance (cfg_scale != 1) the model runs
    on a doubled batch, so FLOPs per image double. Items are images, not model rows."""
    import torch

    from pixbench.eval.measure import autocast

    latent = (latent_channels, latent_size)
    model, info = _dit(size, patch, latent, device)
    model.eval()
    x, y = _dit_inputs(batch, latent, device)
    t = torch.full((batch,), 500, dtype=torch.long, device=device)  # (B,)
    dev, bf16 = torch.device(device), dtype == "bf16"
    guided = cfg_scale != 1.0

    def step() -> None:
        with torch.inference_mode(), autocast(dev, bf16), attention_context(device, dtype):
            if guided:
                model.forward_with_cfg(x, t, y, cfg_scale)
            else:
                model(x, t, y)
        sync(device)

    info.update(cfg_scale=cfg_scale, model_rows_per_image=2 if guided else 1)
    return Prepared(step, batch, (2 if guided else 1) * _dit_flops(size, patch, latent), info)


@register("tokenizer_encode")
def tokenizer_encode(*, image_size: int, in_chans: int, batch: int, device: str,
                     downsample: int = 4, base_channels: int = 16, latent_channels: int = 4,
                     codebook_size: int = 256, dtype: str = "fp32") -> Prepared:
    """VQ tokenizer encode of a batch: `encode(x).latents` then `quantize(z)` (codes and
    quantised latents), eval mode, no autograd; images in [-1, 1]."""
    import torch

    from pixbench.models.vqgan import build_vqmodel

    if dtype != "fp32":
        raise ValueError("tokenizer_encode runs in fp32 only (as tasks/tokenizer.py encodes)")
    torch.manual_seed(0)
    model = build_vqmodel(in_channels=in_chans, downsample=downsample,
                          base_channels=base_channels, layers_per_block=1, mid_attention=True,
                          latent_channels=latent_channels, codebook_size=codebook_size,
                          commitment=0.25, sample_size=image_size).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, in_chans, image_size, image_size, generator=gen) * 2 - 1).to(device)

    def step() -> None:
        with torch.inference_mode():
            z = model.encode(x).latents  # (B, c, h, w)
            model.quantize(z)
        sync(device)

    side = image_size // downsample
    info = {"params_m": _params_m(model), "latent": f"{latent_channels}x{side}x{side}",
            "tokens": side * side,  # codes per image: the DiT's tokens at p=1
            "codebook_size": codebook_size, "flops_counted": "torch.utils.flop_counter"}
    return Prepared(step, batch, _counted_flops(step, batch), info)


@register("fid_features")
def fid_features(*, image_size: int, batch: int, device: str, in_chans: int = 1,
                 width: int = 32, feature_dim: int = 128, num_classes: int = 10,
                 dtype: str = "fp32") -> Prepared:
    """FID/IS features of a batch with the custom extractor: uint8 (B, 3, H, W) → FeatNet input
    (`to_net_input`) → `features_and_logits`, eval mode, no autograd (random weights: the
    cost does not depend on them)."""
    import torch

    from pixbench.eval.fidelity import to_net_input
    from pixbench.models.featnet import FeatNet

    if dtype != "fp32":
        raise ValueError("fid_features runs in fp32 only (as the torch-fidelity extractor does)")
    torch.manual_seed(0)
    model = FeatNet(in_chans=in_chans, num_classes=num_classes, width=width,
                    feature_dim=feature_dim).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8,
                      generator=gen).to(device)  # (B, 3, H, W), as torch-fidelity feeds it

    def step() -> None:
        with torch.inference_mode():
            model.features_and_logits(to_net_input(x, in_chans))
        sync(device)

    info = {"params_m": _params_m(model), "feature_dim": feature_dim,
            "flops_counted": "torch.utils.flop_counter"}
    return Prepared(step, batch, _counted_flops(step, batch), info)
