"""Synchronised step timing and peak memory, shared by `run_suite` and the pytest benchmarks.

Timing is nanoGPT's burn-in then time: warm-up steps first (they also pay for torch.compile),
then `rounds` steps, each synchronised and timed on its own so the record keeps the spread.
The number of rounds follows from the last warm-up step: enough for `min_time_s`, at least
`min_steps`, at most `max_steps`.

Peak memory of a workload = peak during the timed steps − memory before the workload was built,
so weights, gradients, optimizer state, the input batch and activations count and the
interpreter and libraries do not. CUDA: the caching allocator's `max_memory_allocated`. CPU: the
process's resident-set high-water mark (VmHWM), reset by writing 5 to /proc/self/clear_refs
(as eval/measure.py does); glibc keeps freed heap resident, so `malloc_trim(0)` runs before
every reading of the baseline, or the last workload's freed memory would hide in it.
"""

from __future__ import annotations

import ctypes
import gc
import math
import time
from collections.abc import Callable
from pathlib import Path


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def rounds_for(step_s: float, *, min_steps: int, min_time_s: float, max_steps: int) -> int:
    if step_s <= 0:
        return max_steps
    return int(min(max_steps, max(min_steps, math.ceil(min_time_s / step_s))))


def time_steps(step: Callable[[], None], rounds: int) -> list[float]:
    """Wall time of each of `rounds` calls; `step` synchronises the device itself."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return None


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline may include freed heap
        pass


def memory_now_mb(device: str) -> float | None:
    """Memory in use now, after freeing what can be freed (the baseline of a workload)."""
    _trim_heap()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return torch.cuda.memory_allocated() / 2**20
    return _proc_status_mb("VmRSS")


class PeakMemory:
    """Context manager: `peak_mb` is the high-water mark of the enclosed code (None if unknown)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_mb: float | None = None
        self.kind = "cuda_max_memory_allocated" if device == "cuda" else "cpu_vmhwm"

    def __enter__(self) -> PeakMemory:
        _trim_heap()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._ok = True
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self._ok = True
            except OSError:  # not Linux, or not permitted
                self._ok = False
        return self

    def __exit__(self, *exc) -> None:
        if not self._ok:
            return
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak_mb = _proc_status_mb("VmHWM")
