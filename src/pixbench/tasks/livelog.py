"""dvclive logs that a resumed run continues without duplicates.

dvclive appends a row per logged value to `plots/metrics/<name>.tsv` (columns `step`, value;
no timestamps) and rewrites its summary `metrics.json` at every `next_step`. A task logs one
dvclive step per curve row, the rows of `State.history`; rows logged after the last checkpoint
would be logged again by the resumed run. So a resumed run first cuts every TSV to the rows
its checkpoint knows and rebuilds the summary from them (also mending a file cut short by a
kill), and the logs end identical to an uninterrupted run's.
"""

from __future__ import annotations

import json
from pathlib import Path

from pixbench.runio import atomic_write_bytes


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
