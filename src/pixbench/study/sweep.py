"""`pixbench sweep` here: classification cells run --jobs at a time by the study's worker pool
(study/local.py), then the cells that belong to the DVC study recorded in dvc.lock, so results
reach the lock however they were run (a sweep, `study run` or `dvc repro`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pixbench.errors import UserError


def stage_name(spec) -> str:
    """The dvc.yaml stage cell that runs this classification spec (dvc.yaml, cells.yaml)."""
    stage = "locality" if spec.variant else "classify"
    return f"{stage}@{spec.profile}-{spec.run_id.removeprefix('classify-')}"


def run_here(specs: list, *, jobs: int | None, threads: int | None, paths,
             say=print) -> list[dict]:
    """Run the pending specs here; one row per spec (run_id, state, top1 / error)."""
    from pixbench.launch import finished
    from pixbench.study.dag import Cell
    from pixbench.study.local import run_cells
    from pixbench.study.state import new_study_id, studies_dir

    cores = len(os.sched_getaffinity(0))
    jobs = jobs or cores
    threads = threads or max(1, cores // jobs)
    cells = [Cell(spec.run_id, "classify", spec.task, spec, "restart", "auto", [],
                  finished(spec.task, spec, paths) is not None) for spec in specs]
    folder = studies_dir(paths).resolve() / new_study_id()
    say(f"sweep: {len(cells)} cells, {sum(c.done for c in cells)} finished already; {jobs} at "
        f"a time, {threads} thread(s) each; logs: {folder}")
    start = time.perf_counter()
    states = run_cells(cells, jobs=jobs, threads=threads, folder=folder, paths=paths, say=say)
    say(f"sweep: cells ran in {time.perf_counter() - start:.0f} s")
    rows = []
    for spec in specs:
        m = finished(spec.task, spec, paths)
        state = {"reused": "DONE", "done": "DONE"}.get(states[spec.run_id], "FAILED")
        rows.append({"run_id": spec.run_id, "state": state, **({"top1": m["top1"]} if m else
                                                                {"error": states[spec.run_id]})})
    return rows


def record_study_cells(root: Path, params, specs: list, paths) -> list[str]:
    """Record in dvc.lock the finished specs that are cells of the DVC study (cells.yaml);
    the names recorded. Nothing when `root` has no dvc.yaml (a sweep outside the repo)."""
    from pixbench.launch import finished
    from pixbench.study.dag import commit_cells

    cells_file = Path(root) / "cells.yaml"
    if not (Path(root) / "dvc.yaml").is_file() or not cells_file.is_file():
        return []
    import yaml

    listed = yaml.safe_load(cells_file.read_text()).get("cells", {})
    keys = {f"classify@{k}" for k in listed.get("classify", {})} | \
        {f"locality@{k}" for k in listed.get("locality", {})}
    names = [stage_name(s) for s in specs if stage_name(s) in keys and
             finished(s.task, s, paths) is not None]
    from pixbench.config.pipeline import make_prepare_spec

    if names and params.profile in listed.get("data", {}) and \
            finished("prepare", make_prepare_spec(params, gen=False), paths) is not None:
        names.insert(0, f"prepare@{params.profile}")  # the cache the cells read
    try:
        if names:
            commit_cells(root, names)
    except UserError as exc:
        raise UserError(f"the cells finished but were not recorded in dvc.lock: {exc}; "
                        "`dvc repro` records them (it reuses finished cells)") from None
    return names
