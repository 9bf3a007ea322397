"""`pixbench bench`: run a benchmark suite, print the targets table, say where the files are.

cli/bench.py registers it (heavy imports stay inside): `pixbench bench --suite quick` calls
`bench_command("quick", out, threads)`. A suite is one of plan.py's PROFILES; the flag is
`--suite` because `--profile` names a profile of params.yaml in every other command.
"""

from __future__ import annotations

import json
from pathlib import Path

STYLE = {"PASS": "green", "MISS": "red", "PENDING": "yellow", "N/A": "dim", "INFO": "cyan"}


def bench_command(suite: str = "auto", out_dir: Path = Path("reports/bench"),
                  threads: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from pixbench.bench.run import run_suite

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
