"""The checks that are not a task: the device itself, bf16 vs fp32 on one training step, fused
(flash) attention at pixel-token lengths, and the benchmark suite.

Tolerances (stated once, in the summary too):
- bf16 autocast vs fp32, one AdamW step of the same ViT from the same weights on the same
  batch: the step's loss within LOSS_RTOL relative, the gradients' cosine >= GRAD_COS, and the
  fp32 loss after the step within LOSS_RTOL of each other.
- flash vs the fp32 math path of scaled-dot-product attention on bf16 inputs: outputs within
  ATTN_ATOL absolute, input gradients within ATTN_GRAD_RTOL (norm of the difference / norm).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from gpucheck.context import Ctx
from gpucheck.harness import LIMIT_ENV, CheckFailed

LOSS_RTOL = 0.02
GRAD_COS = 0.99
ATTN_ATOL = 0.02
ATTN_GRAD_RTOL = 0.02
TIMM_MIN = (1, 0, 20)
# (module, distribution) pixbench imports beyond torch; the ones a GPU image may lack first
IMPORTS = (("pydantic_settings", "pydantic-settings"), ("pydantic", "pydantic"),
           ("diffusers", "diffusers"), ("dvclive", "dvclive"), ("dvc.repo", "dvc"),
           ("torch_fidelity", "torch-fidelity"), ("submitit", "submitit"), ("timm", "timm"),
           ("torchvision", "torchvision"), ("scipy", "scipy"), ("matplotlib", "matplotlib"),
           ("yaml", "pyyaml"), ("rich", "rich"), ("typer", "typer"),
           ("markdown_it", "markdown-it-py"), ("huggingface_hub", "huggingface-hub"))


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("+")[0].split(".")[:3] if x.isdigit())


def _nccl_version(torch) -> str:
    v = torch.cuda.nccl.version()  # a tuple in torch 2.x, an int (2708) before
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def imports() -> tuple[dict, list[str]]:
    """Versions of what pixbench imports beyond torch, and every one that fails to import."""
    import importlib
    from importlib.metadata import version

    found, missing = {}, []
    for module, dist in IMPORTS:
        try:
            importlib.import_module(module)
            found[dist] = version(dist)
        except Exception as exc:  # noqa: BLE001 - each missing package is named at once
            missing.append(f"{dist} ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
    return found, missing


def _cuda(fig: dict) -> list[str]:
    """The GPU's figures into `fig`; the problems found."""
    import torch

    if not torch.cuda.is_available():
        return [f"CUDA is not available to torch {torch.__version__} (built for CUDA "
                f"{torch.version.cuda}); CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}"]
    props = torch.cuda.get_device_properties(0)
    a = torch.randn(1024, 1024, device="cuda")
    finite = bool(torch.isfinite(a @ a).all().item())
    torch.cuda.synchronize()
    fig.update(device=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
               capability=f"{props.major}.{props.minor}",
               gpu_memory_gb=round(props.total_memory / 2**30, 1),
               bf16=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version(),
               nccl=_nccl_version(torch), flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
               matmul_ok=finite)
    return [] if fig["bf16"] and finite else [f"{fig['device']}: bf16 {fig['bf16']}, "
                                              f"matmul finite {finite}"]


def env(ctx: Ctx) -> dict:
    """The device, the library versions, and one synchronised CUDA matmul. Its figures reach
    the summary even when a check fails (they name the machine)."""
    import torch
    import torch.distributed as dist

    found, missing = imports()
    fig = {"python": platform.python_version(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
           "device": "cpu" if ctx.cpu else "no CUDA device",
           "packages": found, "cpu_isa": torch.backends.cpu.get_cpu_capability()}
    problems = [f"cannot import {'; '.join(missing)} (wheels: `make gpu-wheels`)"] if missing \
        else []
    fig["timm"] = found.get("timm", "missing")
    if "timm" in found and _version_tuple(found["timm"]) < TIMM_MIN:
        problems.append(f"timm {found['timm']} < {'.'.join(map(str, TIMM_MIN))} (pyproject)")
    if not (dist.is_available() and (dist.is_gloo_available() if ctx.cpu
                                     else dist.is_nccl_available())):
        problems.append(f"torch.distributed has no {ctx.backend} backend here")
    if not ctx.cpu:
        problems += _cuda(fig)
    where = fig["device"] + (f" x{fig['gpus']}" if "gpus" in fig else "")
    detail = (f"{where}, torch {fig['torch']}, timm {fig['timm']}, python {fig['python']}"
              + (f", NCCL {fig['nccl']}" if "nccl" in fig else ""))
    if problems:
        return {"status": "fail", "detail": "; ".join(problems), "figures": fig}
    return {"detail": detail, "figures": fig}


def data(ctx: Ctx) -> dict:
    from gpucheck.data import prepare

    made = prepare(Path(ctx.work), ctx.sizes or ("cpu" if ctx.cpu else "gpu"), Path(ctx.recipes))
    return {"detail": f"params from the recipes + profile gpucheck; {made['images']}",
            "figures": made}


def _batch(n: int, size: int, seed: int, device: str):
    import torch

    from gpucheck.data import CHANNELS, CLASSES, synthetic_split

    x, y = synthetic_split(n, size, CLASSES, seed, CHANNELS)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)
    return x.to(device), torch.from_numpy(y).to(device)  # (N, C, H, W), (N,)


def _one_step(model, x, y, bf16: bool, device: str) -> tuple[float, list, float]:
    """(the step's loss, the gradients, the fp32 loss after one AdamW step)."""
    import torch
    import torch.nn.functional as F

    from pixbench.eval.measure import autocast

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with autocast(torch.device(device), bf16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad.detach().float().flatten() for p in model.parameters()]
    opt.step()
    with torch.no_grad():
        after = F.cross_entropy(model(x).float(), y)
    return float(loss), grads, float(after)


def bf16_agreement(ctx: Ctx) -> dict:
    import copy

    import torch

    from pixbench.models.vit import display_name, vit

    f = ctx.form
    x, y = _batch(f.batch, f.image, 3, ctx.device)
    torch.manual_seed(0)
    model = vit(size=f.vit, patch=2, image_size=f.image, in_chans=x.shape[1], num_classes=4,
                drop_path=0.0).to(ctx.device)
    l32, g32, a32 = _one_step(copy.deepcopy(model), x, y, False, ctx.device)
    l16, g16, a16 = _one_step(model, x, y, True, ctx.device)
    g32, g16 = torch.cat(g32), torch.cat(g16)
    cos = float(torch.nn.functional.cosine_similarity(g32.double(), g16.double(), dim=0))
    fig = {"loss_fp32": l32, "loss_bf16": l16, "loss_rel": abs(l16 - l32) / abs(l32),
           "grad_cosine": cos, "after_fp32": a32, "after_bf16": a16,
           "after_rel": abs(a16 - a32) / abs(a32), "loss_rtol": LOSS_RTOL, "grad_cos_min": GRAD_COS}
    detail = (f"{display_name(f.vit, 2)} b{f.batch}: loss {l32:.4f} fp32 vs {l16:.4f} bf16 (rel "
              f"{fig['loss_rel']:.1e} <= {LOSS_RTOL}), grad cosine {cos:.4f} (>= {GRAD_COS}), "
              f"after the step rel {fig['after_rel']:.1e}")
    if fig["loss_rel"] > LOSS_RTOL or fig["after_rel"] > LOSS_RTOL or cos < GRAD_COS:
        raise CheckFailed("bf16 and fp32 disagree: " + detail)
    return {"detail": detail, "figures": fig}


def _sdpa(q, k, v, backend):
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v)


def attention(ctx: Ctx) -> dict:
    """Flash attention at the form's pixel-token length against the fp32 math path, then a
    ViT/1 train step at that length with flash as the only allowed kernel."""
    import torch
    from torch.nn.attention import SDPBackend

    from pixbench.models.vit import display_name

    f, dev = ctx.form, ctx.device
    gen = torch.Generator().manual_seed(0)
    qkv = [torch.randn(4, 3, f.attn_tokens, 64, generator=gen) for _ in range(4)]
    q, k, v = (t.to(dev, torch.bfloat16).requires_grad_() for t in qkv[:3])
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    grad = qkv[3].to(dev)
    out = _sdpa(q, k, v, SDPBackend.FLASH_ATTENTION)
    out.backward(grad.to(torch.bfloat16))
    ref = _sdpa(q32, k32, v32, SDPBackend.MATH)
    ref.backward(grad)
    err = float((out.float() - ref).abs().max())
    gerr = max(float((a.grad.float() - b.grad).norm() / b.grad.norm())
               for a, b in ((q, q32), (k, k32), (v, v32)))
    if err > ATTN_ATOL or gerr > ATTN_GRAD_RTOL:
        raise CheckFailed(f"flash vs math at {f.attn_tokens} tokens: max |out diff| {err:.3g} "
                          f"(<= {ATTN_ATOL}), grad rel {gerr:.3g} (<= {ATTN_GRAD_RTOL})")
    model_fig = _vit_flash_step(ctx, int(f.attn_tokens ** 0.5))
    fig = {"tokens": f.attn_tokens, "out_max_abs_err": err, "grad_rel_err": gerr, **model_fig}
    return {"detail": f"{f.attn_tokens} tokens: flash vs fp32 math max err {err:.1e}, grad rel "
            f"{gerr:.1e}; {display_name(f.vit, 1)} train step with flash only: loss "
            f"{model_fig['vit_loss']:.3f}" + (f", peak {model_fig['peak_mem_mb']:,.0f} MB"
                                              if "peak_mem_mb" in model_fig else ""),
            "figures": fig}


def _vit_flash_step(ctx: Ctx, side: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pixbench.models.vit import vit

    x, y = _batch(8, side, 4, ctx.device)
    model = vit(size=ctx.form.vit, patch=1, image_size=side, in_chans=x.shape[1],
                num_classes=4, drop_path=0.0).to(ctx.device)
    if not all(getattr(b.attn, "fused_attn", False) for b in model.blocks):
        raise CheckFailed("timm's attention is not the fused (scaled_dot_product) path")
    if ctx.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast(ctx.device,
                                                                   dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    out = {"vit_loss": float(loss)}
    if ctx.device == "cuda":
        torch.cuda.synchronize()
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if not torch.isfinite(loss):
        raise CheckFailed("non-finite loss in the flash ViT step")
    return out


def bench(ctx: Ctx) -> dict:
    """The benchmark suite through benchsuite.run_suite, then what its JSON must show."""
    from benchsuite.run import run_suite
    from gpucheck.judge import judge_bench

    limit = float(os.environ.get(LIMIT_ENV, 0)) or None
    deadline = ctx.bench_deadline_s or (max(5.0, limit - max(15.0, 0.1 * limit))
                                        if limit else None)
    select = None
    if ctx.bench_select:
        def select(case) -> bool:
            return any(s in case.id for s in ctx.bench_select)
    path = run_suite(ctx.bench_suite, Path(ctx.out), select=select, deadline_s=deadline,
                     log=lambda m: print(m, flush=True))
    return judge_bench(json.loads(path.read_text()), path, ctx, select)
