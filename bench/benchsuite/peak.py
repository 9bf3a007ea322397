"""The matmul peak that MFU is divided by, measured in the same run, device and dtype.

Square n×n @ n×n products (2·n³ FLOPs each), warm-up first, then `reps` timed products, each
synchronised on CUDA; the figure is the median over reps, the same statistic as the workloads
use, and the best rep is kept beside it.

A dtype without a fast path (bf16 on a CPU without AVX512_BF16/AMX runs a reference loop, tens
of times slower than fp32) is found with a small probe first, so the run does not spend minutes
on a 2048² product: `fast_path` is False when the probe reaches under half the fp32 rate.
"""

from __future__ import annotations

from collections.abc import Callable

from benchsuite.timing import median, sync

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PROBE_N = 256


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def _matmul_step(device: str, dtype: str, n: int) -> Callable[[], None]:
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=torch_dtype(dtype))
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=torch_dtype(dtype))
    out = torch.empty(n, n, device=device, dtype=torch_dtype(dtype))

    def step() -> None:
        torch.mm(a, b, out=out)
        sync(device)

    return step


def matmul_rate(device: str, dtype: str, n: int, reps: int, warmup: int = 1,
                timer: Callable | None = None) -> dict:
    """FLOP/s of n×n matmuls; `timer(step, rounds) -> [seconds]` (default: plain timing)."""
    from benchsuite.timing import time_steps

    step = _matmul_step(device, dtype, n)
    for _ in range(warmup):
        step()
    times = (timer or time_steps)(step, reps)
    flops = 2.0 * n ** 3
    return {"dtype": dtype, "n": n, "reps": len(times), "flops_per_s": flops / median(times),
            "flops_per_s_best": flops / min(times), "fast_path": True}


def measure_peak(device: str, dtype: str, n: int, reps: int, timer: Callable | None = None,
                 fp32_probe: float | None = None) -> dict:
    """The peak of one dtype; reduced dtypes are probed first against the fp32 probe rate."""
    if dtype != "fp32" and fp32_probe is not None:
        probe = _single_thread(lambda: matmul_rate(device, dtype, PROBE_N, reps=5))
        if probe["flops_per_s_best"] < 0.5 * fp32_probe:
            rate = probe["flops_per_s_best"] / 1e9
            return {**probe, "fast_path": False,
                    "note": f"{dtype} {PROBE_N}² matmul at {rate:.1f} GFLOP/s < half of fp32's "
                            f"{fp32_probe / 1e9:.1f} (one thread each): no fast {dtype} GEMM here"}
    return matmul_rate(device, dtype, n, reps, timer=timer)


def _single_thread(fn: Callable):
    """Run fn with one intra-op thread on the CPU: a small product on two threads of a busy box
    waits at OpenMP barriers (seen: 2 GFLOP/s instead of 70), which would fake a slow fp32."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def fp32_probe(device: str) -> float:
    """Best of 5 small fp32 products on one thread (CPU), the yardstick for reduced dtypes."""
    if device == "cuda":
        return matmul_rate(device, "fp32", PROBE_N, reps=5)["flops_per_s_best"]
    return _single_thread(lambda: matmul_rate(device, "fp32", PROBE_N, reps=5))["flops_per_s_best"]


def local_peak(device: str, dtype: str, n: int, reps: int = 3) -> float:
    """A short re-measurement next to a workload: shows whether the box was contended then."""
    return matmul_rate(device, dtype, n, reps, warmup=0)["flops_per_s"]
