"""The registry of benchmark workloads: what a workload builder returns and how it registers.

A builder turns keyword arguments into a `Prepared`: a step that runs one synchronised unit of
work (a train step, a forward pass, one augmented batch), the items it processes and the
analytic FLOPs per item (None where FLOPs mean nothing, as for data loading).

The builders live in workloads_vit.py (classification) and workloads_gen.py (pre-training and
generation); both import this module and register with `@register(name)`. workloads.py imports
both, so `benchsuite.workloads.WORKLOADS` / `build` always see every workload. A new
workload registers with `@register(name)` in one of them and adds cases to plan.py.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field


@dataclass
class Prepared:
    step: Callable[[], None]  # one unit of work, synchronised on the device
    items_per_step: int
    flops_per_item: float | None  # analytic, attention counted; None: not a FLOP workload
    info: dict = field(default_factory=dict)  # tokens, params, attention path, ...


Builder = Callable[..., Prepared]
WORKLOADS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        WORKLOADS[name] = fn
        return fn
    return deco


def attention_context(device: str, dtype: str):
    """CUDA: only fused kernels (flash for bf16/fp16, memory-efficient for fp32), so a silent
    fallback to the T²-memory math path is an error, not a slow number. CPU: torch's default
    (the fused flash kernel for CPU)."""
    if device != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fused = SDPBackend.EFFICIENT_ATTENTION if dtype == "fp32" else SDPBackend.FLASH_ATTENTION
    return sdpa_kernel([fused])
