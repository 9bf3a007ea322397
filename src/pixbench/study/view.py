"""What a study shows: the DAG's states as a table (live while it runs) and the summary, which
names every failed cell with its job id, its log and the remote traceback.

The traceback is read from the job's log (submitit prints it there before it writes its result
file), so nothing is unpickled here.
"""

from __future__ import annotations

import datetime
import time
from collections import Counter
from pathlib import Path

from pixbench.study.state import all_ended, cell_states

STYLE = {"pending": "dim", "running": "cyan", "done": "green", "reused": "green",
         "failed": "bold red", "cancelled": "yellow"}
ORDER = ("running", "pending", "done", "reused", "failed", "cancelled")


def _elapsed(row: dict) -> str:
    if not row.get("start"):
        return ""
    start = datetime.datetime.fromisoformat(row["start"])
    end = datetime.datetime.fromisoformat(row["end"]) if row.get("end") else datetime.datetime.now()
    return str(datetime.timedelta(seconds=int((end - start).total_seconds())))


def counts(rows: list[dict]) -> str:
    n = Counter(r["state"] for r in rows)
    return ", ".join(f"{n[s]} {s}" for s in ORDER if n[s])


def table(state: dict, rows: list[dict]):
    from rich.table import Table

    t = Table(title=f"study {state['id']}: {counts(rows)}", title_justify="left")
    for col in ("cell", "task", "job", "state", "time", "waits for"):
        t.add_column(col, no_wrap=col != "waits for")
    for r in rows:
        waits = ", ".join(r["parents"]) if len(r["parents"]) <= 3 else f"{len(r['parents'])} cells"
        t.add_row(r["name"], r["task"], r.get("job_id") or "", r["state"], _elapsed(r), waits,
                  style=STYLE.get(r["state"], ""))
    return t


def watch(state: dict, poll_s: float = 3.0) -> list[dict]:
    """Show the live table on stderr until every job has ended; return the last states."""
    from rich.console import Console
    from rich.live import Live

    rows, console = cell_states(state), Console(stderr=True)
    with Live(table(state, rows), console=console, refresh_per_second=1) as live:
        while not all_ended(rows):
            time.sleep(poll_s)
            rows = cell_states(state)
            live.update(table(state, rows))
    console.line()
    return rows


def remote_traceback(log: str | None, max_lines: int = 40) -> str:
    """The last traceback in a job's log (submitit prints the task's), else the log's tail. A
    long one keeps its end, where the error is, and says what it left out."""
    if not log or not Path(log).is_file():
        return f"(no log at {log})"
    text = Path(log).read_text(errors="replace")
    at = text.rfind("Traceback (most recent call last)")
    lines = (text[at:] if at >= 0 else text).rstrip().splitlines()
    if at < 0:
        return "\n".join(lines[-15:])
    if len(lines) > max_lines:
        cut = len(lines) - max_lines + 2
        lines = [lines[0], f"  ... ({cut} lines of the stack left out)", *lines[cut + 1:]]
    return "\n".join(lines)


def summary(state: dict, rows: list[dict]) -> list[str]:
    """Counts, then each failed cell (job id, log, remote traceback), then the cancelled."""
    lines = [f"study {state['id']}: {len(rows)} cells: {counts(rows)}"]
    for r in rows:
        if r["state"] == "failed":
            lines += [f"FAILED {r['name']} ({r['task']} {r['run_id']}): job {r['job_id']} "
                      f"{r.get('raw', '')}, log {r['log']}",
                      *("    " + ln for ln in remote_traceback(r["log"]).splitlines())]
    cancelled = [r for r in rows if r["state"] == "cancelled"]
    if cancelled:
        failed = {r["name"] for r in rows if r["state"] == "failed"}
        lines.append(f"cancelled ({'a parent failed' if failed else 'by request'}): "
                     + ", ".join(r["name"] for r in cancelled))
    if all_ended(rows) and not failed_or_cancelled(rows):
        lines.append("every cell is done and recorded: `dvc status` is clean, `dvc repro` "
                     "submits nothing")
    elif not all_ended(rows):
        lines.append(f"watch it: pixbench study status {state['id']} --wait")
    return lines


def failed_or_cancelled(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["state"] in ("failed", "cancelled")]
