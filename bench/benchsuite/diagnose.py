"""Where a step's time goes: matmuls, attention kernels, everything else (torch.profiler).

This is what turns a missed MFU target into a statement: matmuls alone run near the peak, so
the gap is the share of time in attention and in memory-bound ops (LayerNorm, GELU, softmax,
copies, bias gradients, the optimizer). CPU: self time of aten ops on the calling thread (wall
time, intra-op threads included). CUDA: self time of device kernels.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CPU_MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm",
              "aten::mkldnn_convolution", "aten::_convolution", "aten::_mkldnn_matmul"}
GPU_MATMUL = ("gemm", "xmma", "cutlass", "nvjet", "cublas", "wgmma")
ATTENTION = ("attention", "flash", "fmha", "sdpa")


def _category(name: str, cuda: bool) -> str:
    low = name.lower()
    if any(a in low for a in ATTENTION):
        return "attention"
    if (cuda and any(m in low for m in GPU_MATMUL)) or (not cuda and name in CPU_MATMUL):
        return "matmul"
    return "other"


def op_breakdown(step: Callable[[], None], device: str, top: int = 6) -> dict:
    """Shares of op time by category over one profiled step, and the heaviest other ops."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
    totals = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    others: dict[str, float] = {}
    for ev in prof.key_averages():
        if cuda and ev.device_type != DeviceType.CUDA:
            continue
        us = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        if us <= 0:
            continue
        cat = _category(ev.key, cuda)
        totals[cat] += us / 1e6
        if cat == "other":
            others[ev.key] = others.get(ev.key, 0.0) + us / 1e6
    op_s = sum(totals.values())
    heavy = sorted(others.items(), key=lambda kv: -kv[1])[:top]
    return {"wall_s": wall, "op_s": op_s, "timer": "cuda_kernels" if cuda else "cpu_self_time",
            "share": {k: v / op_s for k, v in totals.items()} if op_s else {},
            "seconds": totals, "top_other": [{"op": k, "share": v / op_s} for k, v in heavy]}
