"""`pixbench bench`: the compute benchmarks (a benchmark *suite*; `--profile` is not used here,
since everywhere else it names a profile of params.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pixbench.cli.options import command

SuiteOpt = Annotated[str, typer.Option(
    "--suite", help="auto | quick | cpu | cpu-compile | gpu | gpu-check (auto: gpu with "
    "CUDA, else cpu; gpu-check: the cut of gpu that python -m pixbench.gpucheck runs).")]
OutOpt = Annotated[Path, typer.Option("--out", help="Where the JSON, summary and plots go.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, max=4096, help="CPU threads (default: the idle cores).")]


@command("bench")
def bench_cmd(suite: SuiteOpt = "auto", out: OutOpt = Path("reports/bench"),
              threads: ThreadsOpt = None) -> None:
    """Compute benchmarks: throughput, memory, MFU and scaling of pixel vs patch tokens."""
    from pixbench.bench.plan import PROFILES
    from pixbench.errors import UserError

    if suite != "auto" and suite not in PROFILES:
        raise UserError(f"--suite {suite!r}: expected auto, {', '.join(PROFILES)}")
    from pixbench.bench.cli_bench import bench_command

    bench_command(suite, out, threads)
