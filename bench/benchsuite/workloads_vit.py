"""Workloads of the classification track: the ViT train step, inference forward, data loading.

Registered on import (workloads.py imports this module). The train step is the project's
(tasks/classify `ClassifyBody.step`): autocast, cross-entropy with label smoothing,
`zero_grad(set_to_none=True)`, backward, AdamW over `param_groups` (tasks/optim.py) with the
paper recipe's betas and weight decay, stochastic depth as in the recipe. Inputs are a fixed
synthetic batch already on the device: data loading is a workload of its own.
"""

from __future__ import annotations

from benchsuite.registry import Prepared, attention_context, register
from benchsuite.timing import sync

# The paper recipe's step settings (params.yaml profiles cifar100 / imagenet28).
LABEL_SMOOTHING = 0.1
DROP_PATH = 0.1
WEIGHT_DECAY = 0.3
BETAS = (0.9, 0.95)
LR = 1e-3
# Augmentations of params.yaml: "paper" = the cifar100/imagenet28 profiles (MoCo v3 style),
# "flip" = the fmnist-cpu default.
AUGMENTS = {
    "paper": {"hflip": True, "crop_padding": 0, "rrc_scale_min": 0.2, "color_jitter": 0.4,
              "grayscale_p": 0.2},
    "flip": {"hflip": True, "crop_padding": 0, "rrc_scale_min": None, "color_jitter": 0.0,
             "grayscale_p": 0.0},
}


def _vit_model(size, patch, image_size, in_chans, num_classes, device, drop_path):
    import torch

    from pixbench.models.vit import vit

    torch.manual_seed(0)
    model = vit(size=size, patch=patch, image_size=image_size, in_chans=in_chans,
                num_classes=num_classes, drop_path=drop_path).to(device)
    fused = all(getattr(b.attn, "fused_attn", False) for b in model.blocks)
    info = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "fused_attn": fused,
            "attention": ("flash" if device == "cuda" else "sdpa-cpu") if fused else "manual"}
    return model, info


def _vit_inputs(batch, in_chans, image_size, num_classes, device):
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_chans, image_size, image_size, generator=gen)  # (B, C, H, W)
    y = torch.randint(0, num_classes, (batch,), generator=gen)  # (B,)
    return x.to(device), y.to(device)


def _shape_info(size, patch, image_size, in_chans, num_classes):
    from pixbench.models.flops import attention_fraction
    from pixbench.models.vit import SIZES, vit_shape

    shape = vit_shape(size=size, patch=patch, image_size=image_size, in_chans=in_chans,
                      num_classes=num_classes, pool="avg")
    return shape, {"tokens": shape.tokens, "width": shape.dim,
                   "head_dim": shape.dim // SIZES[size].heads,
                   "attention_flops_fraction": attention_fraction(shape)}


@register("vit_train")
def vit_train(*, size: str, patch: int, image_size: int, in_chans: int, num_classes: int,
              batch: int, dtype: str, device: str, compile: bool = False) -> Prepared:
    """One training step of the classification ViT (fwd + bwd + AdamW)."""
    import torch
    import torch.nn.functional as F

    from pixbench.models.flops import vit_train_flops
    from pixbench.eval.measure import autocast
    from pixbench.tasks.optim import param_groups

    model, info = _vit_model(size, patch, image_size, in_chans, num_classes, device, DROP_PATH)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS)
    fwd = torch.compile(model) if compile else model
    x, y = _vit_inputs(batch, in_chans, image_size, num_classes, device)
    dev, bf16 = torch.device(device), dtype == "bf16"

    def step() -> None:
        with autocast(dev, bf16), attention_context(device, dtype):
            loss = F.cross_entropy(fwd(x), y, label_smoothing=LABEL_SMOOTHING)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)

    shape, more = _shape_info(size, patch, image_size, in_chans, num_classes)
    return Prepared(step, batch, vit_train_flops(shape), {**info, **more})


@register("vit_infer")
def vit_infer(*, size: str, patch: int, image_size: int, in_chans: int, num_classes: int,
              batch: int, dtype: str, device: str, compile: bool = False) -> Prepared:
    """One inference forward pass (eval mode, no autograd)."""
    import torch

    from pixbench.models.flops import vit_forward_flops
    from pixbench.eval.measure import autocast

    model, info = _vit_model(size, patch, image_size, in_chans, num_classes, device, 0.0)
    model.eval()
    fwd = torch.compile(model) if compile else model
    x, _ = _vit_inputs(batch, in_chans, image_size, num_classes, device)
    dev, bf16 = torch.device(device), dtype == "bf16"

    def step() -> None:
        with torch.inference_mode(), autocast(dev, bf16), attention_context(device, dtype):
            fwd(x)
        sync(device)

    shape, more = _shape_info(size, patch, image_size, in_chans, num_classes)
    return Prepared(step, batch, vit_forward_flops(shape), {**info, **more})


@register("data_loading")
def data_loading(*, image_size: int, in_chans: int, batch: int, cache_images: int, augment: str,
                 device: str, dtype: str = "fp32") -> Prepared:
    """One batch as the train loop makes it: index the uint8 cache (N, H, W, C), then
    `normalize` with augmentation and a per-step generator, then move to the device."""
    import torch

    from pixbench.config import AugmentConfig
    from pixbench.data.augment import normalize

    gen = torch.Generator().manual_seed(0)
    cache = torch.randint(0, 256, (cache_images, image_size, image_size, in_chans),
                          dtype=torch.uint8, generator=gen)  # (N, H, W, C)
    mean, std = torch.full((in_chans,), 0.45), torch.full((in_chans,), 0.25)
    cfg = AugmentConfig(**AUGMENTS[augment])
    counter = [0]

    def step() -> None:
        g = torch.Generator().manual_seed(counter[0])  # per-step, as classify's step_seed
        counter[0] += 1
        idx = torch.randint(0, cache_images, (batch,), generator=g)  # (B,)
        x = normalize(cache[idx], mean, std, cfg, g)  # (B, C, H, W) float
        if device == "cuda":
            x.to(device, non_blocking=True)
        sync(device)

    return Prepared(step, batch, None, {"augment": AUGMENTS[augment], "dtype": dtype})
