"""One benchmark run: peaks, then cases, each a record; shared by `run_suite` and pytest.

The only thing the two callers change is the timer: `run_suite` times steps itself, the pytest
benchmarks hand the same step to `benchmark.pedantic`. Warm-up, the number of rounds, memory,
MFU and every field of the record come from here, so both write the same JSON.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable

from benchsuite.peak import fp32_probe, local_peak, measure_peak
from benchsuite.plan import Case, Profile
from benchsuite.timing import (PeakMemory, median, memory_now_mb, rounds_for, time_steps)
from benchsuite.workloads import build

Timer = Callable[[Callable[[], None], int], list[float]]
GUARD_MFU = 0.25  # a case is skipped if its step would exceed max_step_s even at this MFU


class Skip(Exception):
    """A case that cannot run usefully here; the record says why."""


class BenchSession:
    def __init__(self, profile: Profile, log: Callable[[str], None] | None = None,
                 threads: int | None = None) -> None:
        import torch

        from benchsuite.env import auto_threads, environment

        if profile.device == "cuda" and not torch.cuda.is_available():
            from pixbench.errors import UserError

            raise UserError(f"bench profile {profile.name!r} needs a CUDA device; none is visible")
        self._threads_before = torch.get_num_threads()
        threads, why = _pick_threads(threads, profile, auto_threads)
        if threads:
            torch.set_num_threads(threads)
        self.profile, self.device = profile, profile.device
        self.log = log or (lambda msg: None)
        self.env = {**environment(self.device), "threads_reason": why}
        self.log(f"{torch.get_num_threads()} intra-op thread(s): {why}")
        self.peaks: dict[str, dict] = {}
        self.records: dict[str, dict] = {}
        self.started = time.perf_counter()
        self._probe: float | None = None
        self._primed = False

    # ------------------------------------------------------------------------------ peaks

    def peak(self, dtype: str, timer: Timer | None = None) -> dict:
        """The run's matmul peak for a dtype, measured on first use."""
        if dtype not in self.peaks:
            p = self.profile
            if dtype != "fp32" and self._probe is None:
                self._probe = fp32_probe(self.device)
            self.peaks[dtype] = measure_peak(self.device, dtype, p.peak_n, p.peak_reps, timer,
                                             self._probe if dtype != "fp32" else None)
            pk = self.peaks[dtype]
            self.log(f"peak {dtype}: {pk['flops_per_s'] / 1e9:,.1f} GFLOP/s ({pk['n']}², "
                     f"fast path {pk['fast_path']})")
        return self.peaks[dtype]

    # ------------------------------------------------------------------------------ cases

    def run_case(self, case: Case, timer: Timer | None = None) -> dict:
        """Run one case; never raises for the case's own failure (the record says it)."""
        rec = {"id": case.id, "workload": case.workload, "group": case.group,
               "params": dict(case.params)}
        try:
            rec.update(self._measure(case, timer))
            rec["status"] = "ok"
        except Skip as exc:
            rec.update(status="skipped", reason=str(exc))
        except Exception as exc:  # an OOM or a kernel missing on this device: record, go on
            rec.update(status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                       if str(exc) else type(exc).__name__,
                       traceback=traceback.format_exc(limit=3))
        finally:
            gc.collect()
        self.records[case.id] = rec
        self.log(_line(rec))
        return rec

    def _measure(self, case: Case, timer: Timer | None) -> dict:
        p, dev = self.profile, self.device
        dtype = case.params.get("dtype", "fp32")
        peak = self.peak(dtype)
        self._prime()
        base = memory_now_mb(dev)
        prepared = build(case.workload, dev, case.params)
        flops_step = (prepared.flops_per_item or 0.0) * prepared.items_per_step
        estimate = flops_step / (GUARD_MFU * peak["flops_per_s"])
        if estimate > p.max_step_s:
            raise Skip(f"a step would take ~{estimate:.0f} s at {GUARD_MFU:.0%} of the measured "
                       f"{dtype} peak ({peak['flops_per_s'] / 1e9:.1f} GFLOP/s) > "
                       f"{p.max_step_s:.0f} s" + (f"; {peak['note']}" if "note" in peak else ""))
        warm = time_steps(prepared.step, p.warmup)  # the first also compiles
        rounds = rounds_for(warm[-1], min_steps=p.min_steps, min_time_s=p.min_time_s,
                            max_steps=p.max_steps)
        local = local_peak(dev, dtype, p.peak_n) if peak["fast_path"] and flops_step else None
        with PeakMemory(dev) as mem:
            times = (timer or time_steps)(prepared.step, rounds)
        rec = self._figures(prepared, times, warm, peak, local, base, mem, case)
        if case.id == p.breakdown:
            from benchsuite.diagnose import op_breakdown

            rec["breakdown"] = op_breakdown(prepared.step, dev)
        return rec

    def _prime(self) -> None:
        """One tiny train step before the first case: thread pools, the autograd engine, BLAS
        handles and workspaces allocate once per process, and would otherwise be charged to the
        first case's memory (seen: 39 MB for a 16-token step that needs 4)."""
        if not self._primed:
            self._primed = True
            step = build("vit_train", self.device, {"size": "xxs", "patch": 2, "image_size": 8,
                                                     "in_chans": 3, "num_classes": 10, "batch": 2,
                                                     "dtype": "fp32"}).step
            step()
            step()

    def _figures(self, prepared, times, warm, peak, local, base, mem, case) -> dict:
        step_s = median(times)
        rate = prepared.items_per_step / step_s
        rec = {"rounds": len(times), "step_s": step_s, "step_s_min": min(times),
               "step_s_max": max(times), "warmup_s": warm, "items_per_step":
               prepared.items_per_step, "items_per_s": rate, **prepared.info,
               "mem_base_mb": base, "mem_peak_mb": mem.peak_mb, "mem_kind": mem.kind,
               "mem_workload_mb": None if mem.peak_mb is None or base is None
               else max(0.0, mem.peak_mb - base)}
        if case.params.get("compile"):
            rec["compile_s"] = warm[0] - step_s  # first call minus a steady step
        if prepared.flops_per_item:
            achieved = rate * prepared.flops_per_item
            rec.update(flops_per_item=prepared.flops_per_item, flops_per_s=achieved,
                       peak_fast_path=peak["fast_path"])
            # no fast path: the "peak" is a reference loop's rate, a ratio to it means nothing
            rec["mfu"] = achieved / peak["flops_per_s"] if peak["fast_path"] else None
            if local:
                rec.update(local_peak_flops_per_s=local, mfu_local=achieved / local,
                           contention=local / peak["flops_per_s"])
        return rec

    def close(self) -> None:
        """Give the process its thread count back (the session may run inside pytest)."""
        import torch

        torch.set_num_threads(self._threads_before)

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started


def _pick_threads(threads: int | None, profile: Profile, auto) -> tuple[int | None, str]:
    if threads:
        return threads, "given"
    if profile.threads:
        return profile.threads, f"fixed by profile {profile.name}"
    if profile.device == "cpu":
        return auto()
    return None, "torch default"


def _line(rec: dict) -> str:
    if rec["status"] != "ok":
        return f"{rec['id']}: {rec['status']}: {rec.get('reason') or rec.get('error')}"
    out = f"{rec['id']}: {rec['items_per_s']:,.1f} items/s"
    if "flops_per_s" in rec:
        out += f", {rec['flops_per_s'] / 1e9:,.1f} GFLOP/s"
    if rec.get("mfu") is not None:
        out += f", MFU {rec['mfu']:.1%}"
    if rec.get("mem_workload_mb") is not None:
        out += f", mem {rec['mem_workload_mb']:,.0f} MB"
    return out
