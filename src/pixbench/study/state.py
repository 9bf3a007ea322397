"""A study's state file and its jobs' states.

The state file (`<logs>/studies/<id>/study.json`, JSON, written atomically) lists every cell:
its DVC name, task, run id, parents, and its job id, or `reused` when it was finished before
the study began. The same folder is the submitit folder: each job's logs and result files are
there. Job states come from one `sacct` call per poll (accounting keeps the states of ended
jobs; `squeue` forgets them), mapped onto the five states of the DAG.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
from pathlib import Path

from pixbench.errors import UserError
from pixbench.runio import atomic_write_json, read_json

STATE_FILE = "study.json"
RECORD = "record"  # the last job: `dvc repro` with the local launcher

# sacct's states -> the DAG's. A requeued or preempted job waits again under the same job id.
STATES = {
    "PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending", "PREEMPTED": "pending", "SUSPENDED": "pending",
    "CONFIGURING": "running", "RUNNING": "running", "COMPLETING": "running",
    "RESIZING": "running", "STAGE_OUT": "running", "SIGNALING": "running",
    "COMPLETED": "done", "CANCELLED": "cancelled", "REVOKED": "cancelled",
    "FAILED": "failed", "TIMEOUT": "failed", "OUT_OF_MEMORY": "failed", "NODE_FAIL": "failed",
    "BOOT_FAIL": "failed", "DEADLINE": "failed", "SPECIAL_EXIT": "failed",
}
ENDED = ("done", "failed", "cancelled", "reused")


def studies_dir(paths) -> Path:
    return Path(paths.logs_dir) / "studies"


def new_study_id() -> str:
    now = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{now}-{os.getpid()}"


def study_folder(paths, study_id: str | None) -> Path:
    """The folder of study `study_id` (a safe name), or of the latest study when None."""
    from pixbench.names import check_name

    root = studies_dir(paths)
    if study_id is None:
        known = sorted(p.name for p in root.glob("*") if (p / STATE_FILE).is_file())
        if not known:
            raise UserError(f"no study under {root}: start one with `pixbench study submit`")
        study_id = known[-1]
    folder = root / check_name(study_id, "study id")
    if not (folder / STATE_FILE).is_file():
        raise UserError(f"study not found: {folder / STATE_FILE}")
    return folder


def write_state(folder: Path, state: dict) -> None:
    atomic_write_json(folder / STATE_FILE, state)


def read_state(folder: Path) -> dict:
    state = read_json(folder / STATE_FILE, "study state")
    if not isinstance(state, dict) or not isinstance(state.get("cells"), list):
        raise UserError(f"{folder / STATE_FILE}: not a study state file")
    return state


def _expand(job_id: str) -> list[str]:
    """sacct's pending array line `123_[0-3,7%4]` -> 123_0 ... 123_3, 123_7."""
    m = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job_id)
    if not m:
        return [job_id]
    out = []
    for part in m[2].split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m[1]}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def sacct(job_ids: list[str]) -> dict[str, dict]:
    """{job id: {state, raw, start, end}} from one `sacct` call (job and array-task ids)."""
    bases = sorted({j.split("_")[0] for j in job_ids})
    if not bases:
        return {}
    try:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(bases),
                              "-o", "JobID,State,Start,End"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"sacct did not answer ({exc}); is SLURM accounting up?") from None
    if out.returncode != 0:
        raise UserError(f"sacct failed: {out.stderr.strip().splitlines()[-1:] or out.returncode}")
    rows = {}
    for line in out.stdout.splitlines():
        fields = line.split("|")
        if len(fields) < 4:
            continue
        raw = fields[1].split()[0] if fields[1] else "PENDING"  # "CANCELLED by 0"
        for jid in _expand(fields[0]):
            rows[jid] = {"state": STATES.get(raw, "pending"), "raw": raw,
                         "start": _time(fields[2]), "end": _time(fields[3])}
    return rows


def _time(text: str) -> str | None:
    return text if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", text or "") else None


def cell_states(state: dict) -> list[dict]:
    """Every cell of the state file with its current state, start and end."""
    jobs = sacct([c["job_id"] for c in state["cells"] if c.get("job_id")])
    rows = []
    for cell in state["cells"]:
        if not cell.get("job_id"):
            rows.append({**cell, "state": "reused", "raw": "", "start": None, "end": None})
            continue
        info = jobs.get(cell["job_id"], {"state": "pending", "raw": "SUBMITTED",
                                         "start": None, "end": None})
        rows.append({**cell, **info})
    return rows


def all_ended(rows: list[dict]) -> bool:
    return all(r["state"] in ENDED for r in rows)


def cancel(state: dict) -> list[str]:
    """scancel every job of the study that has not ended; returns their ids."""
    rows = cell_states(state)
    live = sorted({r["job_id"] for r in rows if r["state"] not in ENDED})
    if live:
        out = subprocess.run(["scancel", *live], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise UserError(f"scancel failed: {out.stderr.strip() or out.returncode}")
    return live


def queued_elsewhere(paths, run_ids: set[str]) -> list[str]:
    """Cells among `run_ids` that an earlier study still has in the queue (pending or
    running): submitting them again would race for the same run dir."""
    states = [read_state(f.parent) for f in sorted(studies_dir(paths).glob(f"*/{STATE_FILE}"))]
    cells = [(s["id"], c) for s in states for c in s["cells"]
             if c.get("job_id") and c["run_id"] in run_ids]
    jobs = sacct([c["job_id"] for _, c in cells])
    return [f"{c['name']} (study {sid}, job {c['job_id']})" for sid, c in cells
            if jobs.get(c["job_id"], {}).get("state", "pending") in ("pending", "running")]
