"""`python -m benchsuite` (`make bench`): run a benchmark suite, print the targets table, say
where the files are.

    PYTHONPATH=bench .venv/bin/python -m benchsuite --suite quick

A suite is one of plan.py's PROFILES; the flag is `--suite` because `--profile` names a profile
of params.yaml in every pixbench command. Like pixbench's CLI, a mistake in the flags (or a
suite this machine cannot run) is one line on stderr, `error: ...`, and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STYLE = {"PASS": "green", "MISS": "red", "PENDING": "yellow", "N/A": "dim", "INFO": "cyan"}
MAX_THREADS = 4096


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would print the usage too)
        print(f"error: {self.prog}: {' '.join(message.split())}", file=sys.stderr)
        raise SystemExit(2)


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number in 1..{MAX_THREADS}")
    return n


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    from benchsuite.plan import PROFILES

    ap = _Parser(prog="python -m benchsuite", description=(
        "Compute benchmarks: throughput, memory, MFU and scaling of pixel vs patch tokens."))
    ap.add_argument("--suite", default="auto", choices=("auto", *PROFILES),
                    help="auto: gpu with CUDA, else cpu; gpu-check: the cut of gpu that the GPU "
                    "validation kit (python -m gpucheck) runs (default auto)")
    ap.add_argument("--out", type=Path, default=Path("reports/bench"),
                    help="where the JSON, summary and plots go (default reports/bench)")
    ap.add_argument("--threads", type=_threads, default=None,
                    help="CPU threads (default: the idle cores)")
    return ap.parse_args(argv)


def bench_command(suite: str = "auto", out_dir: Path = Path("reports/bench"),
                  threads: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from benchsuite.run import run_suite

    console = Console(stderr=True)
    path = run_suite(suite, Path(out_dir), threads=threads,
                     log=lambda msg: console.print(msg, markup=False, highlight=False))
    doc = json.loads(path.read_text())
    table = Table(title=f"{doc['env_name']} ({doc['duration_s']:.0f} s)", show_lines=True)
    for col in ("figure", "target", "measured", "status", "what limits it"):
        table.add_column(col, overflow="fold")
    for t in doc["targets"]:
        style = STYLE.get(t["status"], "")
        table.add_row(t["figure"], t["target"], t["measured"],
                      f"[{style}]{t['status']}[/{style}]" if style else t["status"], t["limits"])
    Console().print(table)
    files = [path, path.with_suffix(".md")] + [path.parent / p for p in doc["files"]["plots"]]
    Console().print("wrote " + ", ".join(str(f) for f in files))


def main(argv: list[str] | None = None) -> int:
    from pixbench.errors import UserError

    args = parse(argv)
    try:
        bench_command(args.suite, args.out, args.threads)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
