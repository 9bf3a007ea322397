"""Benchmark profiles as plain data: no torch import, so pytest can parametrise from it cheaply.

A profile is a device, the dtypes it compares, how long to time each case, and its cases. Every
case names a registered workload (workloads.py) and that workload's keyword arguments; `group`
says which derived figure it feeds (throughput, scaling, data, compile).

Shapes: CIFAR-like 32x32x3 inputs and 100 classes for the throughput grid (the paper's T and S
tables), a fixed 64x64 image with patch 16 → 1 for the token-scaling sweep (16 → 4096 tokens:
the pixel-vs-patch axis itself), and the paper's 28x28 ImageNet shapes on the GPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Not registered yet; listed in every report so a missing measurement is visible, not silent.
PENDING_WORKLOADS = {
    "mae_encoder": "MAE encoder train/infer: not registered as a bench workload yet",
    "dit": "DiT train/infer: not registered as a bench workload yet (no diffusion track yet)",
    "tokenizer_encode": "tokenizer (VQ) encode: not registered as a bench workload yet (no "
                        "tokenizer yet)",
    "fid_features": "FID feature extraction with the custom extractor: not registered as a "
                    "bench workload yet (no FID module yet)",
}


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


def _quick() -> Profile:
    grid = {"xxs": (1, 2, 4)}
    cases = (_grid(grid, {1: 4, 2: 4, 4: 4}, 8, "fp32")
             + [_vit("vit_train", "xxs", 2, 8, 4, "bf16")]
             + [_vit("vit_train", "xxs", p, 16, 2, "fp32", "scaling") for p in (4, 2, 1)]
             + [Case("data_loading", {"image_size": 8, "in_chans": 3, "batch": 64,
                                      "cache_images": 256, "augment": "paper"}, "data")])
    return Profile("quick", "cpu", ("fp32", "bf16"), peak_n=512, peak_reps=5, warmup=1,
                   min_steps=2, min_time_s=0.05, max_steps=5, max_step_s=2.0, cases=tuple(cases),
                   breakdown="vit_train/xxs-p2-8px-fp32-b4", threads=1)


CPU_BATCH = {1: 8, 2: 8, 4: 64, 8: 128, 16: 256}  # p=1 and p=2 share a batch: the memory ratio


def _cpu() -> Profile:
    grid = {"xxs": (1, 2, 4, 8, 16), "m": (2, 4), "t": (1, 2, 4, 8, 16), "s": (4,)}
    bf16 = {"xxs": (2, 4, 8), "m": (2, 4), "t": (2, 4, 8)}
    cases = (_grid(grid, CPU_BATCH, 32, "fp32")
             + _grid(bf16, CPU_BATCH, 32, "bf16", workloads=("vit_train",))
             + [_vit("vit_train", "xxs", p, 64, 2, "fp32", "scaling") for p in (16, 8, 4, 2, 1)]
             + [Case("data_loading", {"image_size": 32, "in_chans": 3, "batch": 256,
                                      "cache_images": 8192, "augment": "paper"}, "data")])
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
                                      "cache_images": 16384, "augment": "paper"}, "data")])
    return Profile("gpu", "cuda", ("bf16", "fp32"), peak_n=8192, peak_reps=20, warmup=3,
                   min_steps=10, min_time_s=1.0, max_steps=200, max_step_s=10.0,
                   cases=tuple(cases), breakdown="vit_train/s-p1-32px-bf16-b128")


PROFILES = {"quick": _quick, "cpu": _cpu, "cpu-compile": _cpu_compile, "gpu": _gpu}


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
