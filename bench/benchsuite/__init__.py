"""Compute benchmarks: throughput, memory and MFU of pixel vs patch tokens, on CPU and GPU.

Tooling, not part of the installed pixbench (which never imports it): it runs from the checkout
with bench/ on the path. `make bench` (= PYTHONPATH=bench python -m benchsuite --suite auto),
pytest-benchmark through bench/conftest.py, the rehearsals in bench/test_scale_*.py and the
GPU validation kit (tools/gpucheck) use it; pixbench's report only reads the files it writes.

Layout (each module imports torch lazily or only where it measures):
    plan.py       profiles (quick / cpu / gpu) as plain data: which cases, how long to time them
    workloads.py  the registry of workloads: build a case into one synchronised `step()`
                  (ViT train/infer, data loading; workloads_gen.py: MAE, DiT, VQ tokenizer
                  encode, FID features)
    peak.py       the matmul peak every MFU is divided by, measured in the same run
    timing.py     warm-up, timed steps, peak memory (VmHWM on CPU, the allocator on CUDA)
    session.py    runs cases (from `run_suite` or from pytest-benchmark) and collects records
    derive.py     MFU, memory ratios, bf16 speedups, scaling exponents, the targets table
    costs.py      device-hours to reproduce the paper's tables from measured throughput
    report.py     reports/bench/<env>.json, <env>.md and the plots
    run.py        `run_suite(profile, out_dir)`; cli_bench.py: `python -m benchsuite --suite`
"""
