"""`pixbench bench`: run a profile, print the targets table, say where the files are.

cli.py registers it (heavy imports stay inside):

    @app.command("bench")
    def bench(profile: str = typer.Option("auto", help="auto | quick | cpu | gpu"),
              out: Path = typer.Option(Path("reports/bench")),
              threads: Optional[int] = typer.Option(None, help="CPU threads (default: idle cores)")
              ) -> None:
        from pixbench.bench.cli_bench import bench_command
        bench_command(profile, out, threads)
"""

from __future__ import annotations

import json
from pathlib import Path

STYLE = {"PASS": "green", "MISS": "red", "PENDING": "yellow", "N/A": "dim", "INFO": "cyan"}


def bench_command(profile: str = "auto", out_dir: Path = Path("reports/bench"),
                  threads: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from pixbench.bench.run import run_suite

    console = Console(stderr=True)
    path = run_suite(profile, Path(out_dir), threads=threads,
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
