"""Live logs of a training run: dvclive logs that a resumed run continues without duplicates,
and the progress lines on stderr with the elapsed time and an ETA (`Progress`).

dvclive appends a row per logged value to `plots/metrics/<name>.tsv` (columns `step`, value;
no timestamps) and rewrites its summary `metrics.json` at every `next_step`. A task logs one
dvclive step per curve row, the rows of `State.history`; rows logged after the last checkpoint
would be logged again by the resumed run. So a resumed run first cuts every TSV to the rows
its checkpoint knows and rebuilds the summary from them (also mending a file cut short by a
kill), and the logs end identical to an uninterrupted run's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pixbench.runio import atomic_write_bytes


# A progress line at least this often (seconds of wall time), between the lines of the curve
# rows and window ends: a p=1 cell of 10 minutes with one line per epoch once stayed silent
# for 6 minutes (issue 25), indistinguishable from a hung run.
HEARTBEAT_S = 30.0


def duration(seconds: float) -> str:
    """4.24 -> '4.2s', 42 -> '42s', 75 -> '1m15s', 3725 -> '1h02m'."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """One session's progress lines: where the run is, this session's wall time, and an ETA.

    The ETA is the remaining steps at this session's mean step time, from the trainer's
    `train_time_s` (steps and their host syncs only): a curve row's evaluation or a checkpoint
    does not inflate it, and a resumed run's earlier sessions (another machine, perhaps) are
    not mixed in. Evaluations still to come are not in it. It reads the host clock only: no
    device sync (between the trainer's syncs a GPU's queued steps are caught up at the next)."""

    def __init__(self, run_id: str, total_steps: int, state, *, every_s: float | None = None,
                 out=None, clock=time.monotonic) -> None:
        self.run_id, self.total, self.clock = run_id, total_steps, clock
        self.every_s = HEARTBEAT_S if every_s is None else every_s
        self.out = out
        self.start = self.last = clock()
        self.step0, self.train0 = state.global_step, state.train_time_s

    def eta_s(self, state) -> float | None:
        """Seconds of training left, or None before this session's first step."""
        done = state.global_step - self.step0
        if done <= 0:
            return None
        return (state.train_time_s - self.train0) / done * max(0, self.total - state.global_step)

    def due(self) -> bool:
        return self.clock() - self.last >= self.every_s

    def line(self, state, where: str, tail: str = "") -> str:
        """Print `RUN WHERE TAIL | P% elapsed E eta T` (stderr) and return it."""
        eta = self.eta_s(state)
        pct = 100 * state.global_step / max(1, self.total)
        timing = (f"{pct:.0f}% elapsed {duration(self.clock() - self.start)} "
                  f"eta {'?' if eta is None else duration(eta)}")
        text = " ".join(x for x in (self.run_id, where, tail) if x) + " | " + timing
        print(text, file=self.out or sys.stderr, flush=True)
        self.last = self.clock()
        return text


def open_live(live_dir: Path, rows: int, resume: bool):
    """A dvclive Live in `live_dir` at curve row `rows` (resume) or from scratch."""
    from dvclive import Live  # lazy: dvclive imports dvc

    if resume:
        truncate(Path(live_dir), rows)
    return Live(dir=str(live_dir), dvcyaml=None, report=None, save_dvc_exp=False, resume=resume)


def truncate(live_dir: Path, rows: int) -> None:
    """Keep the first `rows` steps of every metric's TSV; rebuild metrics.json from them."""
    summary: dict = {}
    metrics_dir = live_dir / "plots" / "metrics"
    for tsv in sorted(metrics_dir.rglob("*.tsv")) if metrics_dir.is_dir() else ():
        header, *body = tsv.read_text(encoding="utf-8").splitlines(keepends=True) or [""]
        cols = header.rstrip("\r\n").split("\t")
        if "step" not in cols:
            tsv.unlink()  # cut short before its header: the resumed run writes it again
            continue
        keep = [line for line in body if _step(line, cols.index("step")) < rows]
        if len(keep) != len(body):
            atomic_write_bytes(tsv, "".join([header, *keep]).encode())
        if keep:
            value = keep[-1].rstrip("\r\n").split("\t")[-1]
            node = summary
            *parents, leaf = tsv.relative_to(metrics_dir).with_suffix("").parts
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = _number(value)
    summary_file = live_dir / "metrics.json"
    if rows and summary:
        summary["step"] = rows - 1  # in dvclive's key order: its summary continues from this
        atomic_write_bytes(summary_file, json.dumps(summary, indent=4).encode())
    elif summary_file.exists():
        summary_file.unlink()


def _step(line: str, col: int) -> float:
    """The step of a TSV row; a row cut short by a kill counts as past the end."""
    fields = line.rstrip("\r\n").split("\t")
    if not line.endswith("\n") or len(fields) <= col:
        return float("inf")
    try:
        return int(fields[col])
    except ValueError:
        return float("inf")


def _number(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text  # dvclive writes nan/inf as text
