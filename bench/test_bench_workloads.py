"""Benchmarks of every case in the chosen profile (see conftest.py for how to run them)."""

from __future__ import annotations

import pytest


def test_matmul_peak(peak_dtype, bench_session, benchmark, pedantic_timer):
    """The matmul peak each MFU is divided by (reduced dtypes without a fast path: a probe)."""
    peak = bench_session.peak(peak_dtype, timer=pedantic_timer)
    assert peak["flops_per_s"] > 0
    if benchmark.stats is None:  # a probe only (no fast path), or measured earlier by a case
        pytest.skip(peak.get("note") or f"{peak_dtype} peak was measured earlier in the session")
    benchmark.extra_info.update(dtype=peak_dtype, n=peak["n"], gflops=peak["flops_per_s"] / 1e9,
                                fast_path=peak["fast_path"])


def test_workload(bench_case, bench_session, benchmark, pedantic_timer):
    """One case: a ViT train step or forward pass, data loading, or a point of the scaling sweep."""
    rec = bench_session.run_case(bench_case, timer=pedantic_timer)
    if rec["status"] == "skipped":
        pytest.skip(rec["reason"])
    if rec["status"] == "error":
        pytest.fail(rec["error"], pytrace=False)
    benchmark.extra_info.update({k: rec[k] for k in ("items_per_s", "flops_per_s", "mfu",
                                                      "mfu_local", "mem_workload_mb", "tokens")
                                 if rec.get(k) is not None})
    assert rec["items_per_s"] > 0
