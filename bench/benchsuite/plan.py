"""Benchmark profiles as plain data: no torch import, so pytest can parametrise from it cheaply.

A profile is a device, the dtypes it compares, how long to time each case, and its cases. Every
case names a registered workload (workloads.py) and that workload's keyword arguments; `group`
says which derived figure or report table it feeds (throughput, scaling, data, compile; mae,
dit, tokenizer, fid for the pre-training and generation workloads of workloads_gen.py).

Shapes: CIFAR-like 32x32x3 inputs and 100 classes for the throughput grid (the paper's T and S
tables), a fixed 64x64 image with patch 16 → 1 for the token-scaling sweep (16 → 4096 tokens:
the pixel-vs-patch axis itself), and the paper's 28x28 ImageNet shapes on the GPU. MAE on
32x32x3; DiT on 4x8x8 latents (the CPU default tokenizer's) and 4x32x32 (the paper's); the VQ
tokenizer and FID features on 32x32 gray, as the generation track's CPU default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Workloads the issue asks for that are not registered yet; listed in every report so a missing
# measurement is visible, not silent. Empty: all of them are (workloads.py, workloads_gen.py).
PENDING_WORKLOADS: dict[str, str] = {}
# Groups of the pre-training and generation workloads (workloads_gen.py).
GEN_GROUPS = frozenset({"mae", "dit", "tokenizer", "fid"})


@dataclass(frozen=True)
class Case:
    workload: str
    params: dict = field(hash=False)
    group: str = "throughput"

    @property
    def id(self) -> str:
        p = self.params
        if self.workload in ("vit_train", "vit_infer"):
            key = (f"{p['size']}-p{p['patch']}-{p['image_size']}px-{p['dtype']}-b{p['batch']}"
                   + ("-compiled" if p.get("compile") else ""))
        elif self.workload == "data_loading":
            key = f"{p['image_size']}px{p['in_chans']}-b{p['batch']}-{p['augment']}"
        elif self.workload == "mae_encoder":
            key = f"{p['size']}-p{p['patch']}-{p['image_size']}px-{p['dtype']}-b{p['batch']}"
        elif self.workload in ("dit_train", "dit_infer"):
            side = p["latent_size"]
            key = (f"{p['size']}-p{p['patch']}-{p['latent_channels']}x{side}x{side}-{p['dtype']}"
                   f"-b{p['batch']}")
        elif self.workload in ("tokenizer_encode", "fid_features"):
            key = f"{p['image_size']}px{p.get('in_chans', 1)}-b{p['batch']}"
        else:
            key = "-".join(f"{k}{v}" for k, v in sorted(p.items()))
        return f"{self.workload}/{key}"


@dataclass(frozen=True)
class Profile:
    name: str
    device: str  # "cpu" or "cuda"
    dtypes: tuple[str, ...]  # the first is the main dtype (cost estimate, headline MFU)
    peak_n: int  # matmul side for the peak
    peak_reps: int
    warmup: int  # warm-up steps per case (compile happens in the first)
    min_steps: int
    min_time_s: float  # timed steps until this much time has passed...
    max_steps: int  # ...but no more than this many
    max_step_s: float  # skip a case whose step would take longer at 25% of the dtype's peak
    cases: tuple[Case, ...]
    breakdown: str | None = None  # id of the case whose step time is split by op kind
    threads: int | None = None  # torch.set_num_threads; None: the idle cores at the start (CPU)


def _vit(workload: str, size: str, patch: int, image: int, batch: int, dtype: str,
         group: str = "throughput", compile: bool = False, in_chans: int = 3,
         classes: int = 100) -> Case:
    return Case(workload, {"size": size, "patch": patch, "image_size": image, "in_chans": in_chans,
                           "num_classes": classes, "batch": batch, "dtype": dtype,
                           "compile": compile}, group)


def _grid(sizes: dict[str, tuple[int, ...]], batch: dict, image: int, dtype: str,
          workloads=("vit_train", "vit_infer"), classes: int = 100) -> list[Case]:
    return [_vit(w, s, p, image, batch(s, p) if callable(batch) else batch[p], dtype,
                 classes=classes)
            for s, patches in sizes.items() for p in patches for w in workloads]


def _mae(size: str, patch: int, batch: int, dtype: str, image: int = 32,
         in_chans: int = 3) -> Case:
    return Case("mae_encoder", {"size": size, "patch": patch, "image_size": image,
                                "in_chans": in_chans, "batch": batch, "dtype": dtype}, "mae")


def _dit(workload: str, size: str, patch: int, latent: int, batch: int, dtype: str) -> Case:
    """latent: the side of 4-channel latents (8: the CPU default, 32: the paper's)."""
    return Case(workload, {"size": size, "patch": patch, "latent_channels": 4,
                           "latent_size": latent, "batch": batch, "dtype": dtype}, "dit")


DIT = ("dit_train", "dit_infer")


def _gen_grid(mae: dict, dit: dict, batch, dtype: str) -> list[Case]:
    """MAE train steps for mae = {size: patches}; DiT train and sampling steps for
    dit = {size: patches} on 4x8x8 and 4x32x32 latents; batch(kind, size, patch, side)."""
    cases = [_mae(s, p, batch("mae", s, p, 32), dtype) for s, ps in mae.items() for p in ps]
    return cases + [_dit(w, s, p, side, batch(w, s, p, side), dtype) for w in DIT
                    for side in (8, 32) for s, ps in dit.items() for p in ps]


def _eval_cases(tokenizer_batch: int, fid_batches: tuple[int, ...]) -> list[Case]:
    """The VQ tokenizer's encode of 32x32 gray images and FID features (FeatNet) of uint8
    32x32 images, the generation track's defaults (params.yaml fmnist-cpu)."""
    return ([Case("tokenizer_encode", {"image_size": 32, "in_chans": 1, "batch": tokenizer_batch},
                  "tokenizer")]
            + [Case("fid_features", {"image_size": 32, "batch": b}, "fid") for b in fid_batches])


def _quick() -> Profile:
    grid = {"xxs": (1, 2, 4)}
    cases = (_grid(grid, {1: 4, 2: 4, 4: 4}, 8, "fp32")
             + [_vit("vit_train", "xxs", 2, 8, 4, "bf16")]
             + [_vit("vit_train", "xxs", p, 16, 2, "fp32", "scaling") for p in (4, 2, 1)]
             + [Case("data_loading", {"image_size": 8, "in_chans": 3, "batch": 64,
                                      "cache_images": 256, "augment": "paper"}, "data")]
             + [_mae("xxs", p, 4, "fp32") for p in (1, 2, 4)]
             + [_dit(w, "xxs", p, 8, 8, "fp32") for w in DIT for p in (1, 2, 4)]
             + [_dit(w, "xs", 2, 32, 4, "fp32") for w in DIT]
             + _eval_cases(32, (250,)))
    return Profile("quick", "cpu", ("fp32", "bf16"), peak_n=512, peak_reps=5, warmup=1,
                   min_steps=2, min_time_s=0.05, max_steps=5, max_step_s=2.0, cases=tuple(cases),
                   breakdown="vit_train/xxs-p2-8px-fp32-b4", threads=1)


CPU_BATCH = {1: 8, 2: 8, 4: 64, 8: 128, 16: 256}  # p=1 and p=2 share a batch: the memory ratio


def _cpu_gen_batch(kind: str, size: str, patch: int, side: int) -> int:
    """4x8x8 latents: the recipe's train batch (64) and sampling batch (250, CFG doubles it);
    MAE and 4x32x32 latents (1024 tokens at p=1): the ViT grid's batches."""
    if kind != "mae" and side == 8:
        return 64 if kind == "dit_train" else 250
    return CPU_BATCH[patch]


def _cpu() -> Profile:
    grid = {"xxs": (1, 2, 4, 8, 16), "m": (2, 4), "t": (1, 2, 4, 8, 16), "s": (4,)}
    bf16 = {"xxs": (2, 4, 8), "m": (2, 4), "t": (2, 4, 8)}
    cases = (_grid(grid, CPU_BATCH, 32, "fp32")
             + _grid(bf16, CPU_BATCH, 32, "bf16", workloads=("vit_train",))
             + [_vit("vit_train", "xxs", p, 64, 2, "fp32", "scaling") for p in (16, 8, 4, 2, 1)]
             + [Case("data_loading", {"image_size": 32, "in_chans": 3, "batch": 256,
                                      "cache_images": 8192, "augment": "paper"}, "data")]
             + _gen_grid({"xxs": (1, 2, 4), "t": (1, 2, 4)}, {"xxs": (1, 2, 4), "xs": (1, 2, 4)},
                         _cpu_gen_batch, "fp32")
             + _eval_cases(256, (250, 1000)))
    return Profile("cpu", "cpu", ("fp32", "bf16"), peak_n=2048, peak_reps=5, warmup=1,
                   min_steps=3, min_time_s=2.0, max_steps=30, max_step_s=20.0,
                   cases=tuple(cases), breakdown="vit_train/t-p4-32px-fp32-b64")


def _cpu_compile() -> Profile:
    """Opt-in: eager vs torch.compile for ViT-T/4 (a cold compile costs 1-5 min on 2 cores,
    which the default cpu profile's ~6 min budget cannot carry)."""
    cases = [_vit("vit_train", "t", 4, 32, 64, "fp32"),
             _vit("vit_train", "t", 4, 32, 64, "fp32", "compile", compile=True)]
    return dataclasses.replace(_cpu(), name="cpu-compile", dtypes=("fp32",), cases=tuple(cases),
                               breakdown=None)


def _gpu_batch(size: str, patch: int) -> int:
    if patch <= 2:  # p=1 and p=2 share a batch: the memory ratio
        return 64 if size == "b" else 128
    return 512 if patch == 4 else 1024


def _gpu_gen_batch(kind: str, size: str, patch: int, side: int) -> int:
    if kind == "mae":
        return _gpu_batch(size, patch)
    if side == 8:
        return 256 if kind == "dit_train" else 1024
    big = size in ("l", "xl")
    if patch <= 2:  # p=1 and p=2 share a batch
        return (32 if big else 128) * (1 if kind == "dit_train" else 2)
    return (128 if big else 512) * (1 if kind == "dit_train" else 2)


def _gpu() -> Profile:
    grid = {"t": (1, 2, 4, 8), "s": (1, 2, 4, 8), "b": (1, 2, 4, 8)}
    cases = (_grid(grid, _gpu_batch, 32, "bf16")
             + _grid({"s": (1, 2)}, _gpu_batch, 32, "fp32", workloads=("vit_train",))
             + _grid({"s": (1, 2), "b": (1, 2)}, _gpu_batch, 28, "bf16", workloads=("vit_train",),
                     classes=1000)
             + [_vit("vit_train", "s", p, 32, _gpu_batch("s", p), "bf16", "compile", compile=True)
                for p in (1, 2)]
             + [_vit("vit_train", "s", p, 64, 32, "bf16", "scaling") for p in (16, 8, 4, 2, 1)]
             + [Case("data_loading", {"image_size": 32, "in_chans": 3, "batch": 1024,
                                      "cache_images": 16384, "augment": "paper"}, "data")]
             + _gen_grid({"s": (1, 2, 4), "b": (1, 2, 4)}, {"s": (1, 2, 4), "l": (1, 2, 4)},
                         _gpu_gen_batch, "bf16")
             + _eval_cases(1024, (1000,)))
    return Profile("gpu", "cuda", ("bf16", "fp32"), peak_n=8192, peak_reps=20, warmup=3,
                   min_steps=10, min_time_s=1.0, max_steps=200, max_step_s=10.0,
                   cases=tuple(cases), breakdown="vit_train/s-p1-32px-bf16-b128")


def _in_gpu_check(c: Case) -> bool:
    """The `gpu` cases the GPU validation kit needs: MFU by size (ViT-T/S/B train, p 1-8, the
    same-run peak), PiT-S/1 on 32x32, the p=1 vs p=2 memory pair, bf16 vs fp32, token scaling
    16 -> 4096, data loading, and MAE, DiT, tokenizer and FID features at one size each."""
    p = c.params
    if c.group in ("scaling", "data", "tokenizer", "fid"):
        return True
    if c.workload == "vit_train":
        return c.group == "throughput" and p["image_size"] == 32
    if c.workload == "vit_infer":
        return p["size"] == "s" and p["patch"] <= 2
    if c.workload == "mae_encoder":
        return p["size"] == "s"
    return c.workload in DIT and p["size"] == "s" and p["patch"] <= 2


def _gpu_check() -> Profile:
    """`gpu` cut to what `python -m gpucheck` must show within its minutes on a lent
    GPU: no torch.compile (a cold compile alone can take a minute), no 28x28 or large-model
    cases, shorter timing. `--suite gpu` remains the full measurement."""
    full = _gpu()
    return dataclasses.replace(full, name="gpu-check", peak_reps=10, warmup=2, min_steps=5,
                               min_time_s=0.3, max_steps=50,
                               cases=tuple(c for c in full.cases if _in_gpu_check(c)))


PROFILES = {"quick": _quick, "cpu": _cpu, "cpu-compile": _cpu_compile, "gpu": _gpu,
            "gpu-check": _gpu_check}


def get_profile(name: str) -> Profile:
    """A profile by name; "auto" is gpu when CUDA is available, else cpu."""
    if name == "auto":
        import torch

        name = "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PROFILES:
        from pixbench.errors import UserError

        raise UserError(f"unknown bench profile {name!r}; known: auto, {', '.join(PROFILES)}")
    profile = PROFILES[name]()
    ids = [c.id for c in profile.cases]
    assert len(ids) == len(set(ids)), "duplicate case ids in profile " + name
    return profile
