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
    """One case: a ViT train step or forward pass, data loading, or a point of the scaling sweep
    (the MAE, DiT, tokenizer and FID cases: `test_gen_workload`)."""
    rec = bench_session.run_case(bench_case, timer=pedantic_timer)
    if rec["status"] == "skipped":
        pytest.skip(rec["reason"])
    if rec["status"] == "error":
        pytest.fail(rec["error"], pytrace=False)
    benchmark.extra_info.update({k: rec[k] for k in ("items_per_s", "flops_per_s", "mfu",
                                                      "mfu_local", "mem_workload_mb", "tokens")
                                 if rec.get(k) is not None})
    assert rec["items_per_s"] > 0


def test_gen_workload(gen_case, bench_session, benchmark, pedantic_timer):
    """One case of the pre-training and generation tracks: an MAE pre-training step, a DiT train
    step or guided denoising forward, the VQ tokenizer's encode, or FID feature extraction
    (whose img/s is set beside the 1000 img/s CPU target: a miss is a result, not a failure)."""
    from benchsuite.targets import FID_TARGET

    rec = bench_session.run_case(gen_case, timer=pedantic_timer)
    if rec["status"] == "skipped":
        pytest.skip(rec["reason"])
    if rec["status"] == "error":
        pytest.fail(rec["error"], pytrace=False)
    benchmark.extra_info.update({k: rec[k] for k in (
        "items_per_s", "flops_per_item", "flops_per_s", "mfu", "mfu_local", "mem_workload_mb",
        "tokens", "encoder_tokens", "latent", "cfg_scale", "params_m") if rec.get(k) is not None})
    if gen_case.workload == "fid_features":
        benchmark.extra_info.update(target_items_per_s=FID_TARGET,
                                    meets_target=rec["items_per_s"] >= FID_TARGET)
    assert rec["items_per_s"] > 0 and rec["flops_per_item"] > 0
