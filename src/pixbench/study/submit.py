"""Submit the study: one SLURM job per pending cell, `afterok` on its parents' jobs.

Cells of one stage whose parents' jobs are the same (every classification cell waits for
`prepare` only) go as one job array; cells that wait for different jobs (each fine-tune for its
own pre-training) go as separate jobs, so no cell waits for more than its own parents. With
`--kill-on-invalid-dep=yes` SLURM cancels every job whose parent failed, and only those.

A job runs the cell's task directly (launch.TaskJob: the spec its stage command builds, the
local launcher inside the job), never `dvc repro`: DVC's repo lock would serialise the jobs.
The last job (`record`) waits for every other and records them (dag.record: the finished
cells into dvc.lock at once, then `dvc repro` in the job, where launch runs tasks inside a
SLURM job: the report and verify, which have no state to reuse). It first checks that every cell is finished and
fails naming those that are not, so it never trains.
"""

from __future__ import annotations

import datetime
import os
from collections import defaultdict
from pathlib import Path

from submitit.helpers import Checkpointable, DelayedSubmission

from pixbench.errors import UserError
from pixbench.study.dag import CommandLine, record
from pixbench.study.state import RECORD, write_state


class RecordJob(Checkpointable):
    """The study's last job: check that every cell is finished, then `dvc repro TARGETS`."""

    def __init__(self, root: str, targets: list[str], cells: list[tuple[str, dict, str]],
                 paths: dict, cluster: str, cli: CommandLine) -> None:
        self.root, self.targets, self.cells, self.paths = root, targets, cells, paths
        self.cluster, self.cli = cluster, cli

    def __call__(self) -> dict:
        from pixbench.config import Paths
        from pixbench.launch import finished
        from pixbench.tasks.table import TASKS

        os.chdir(self.root)
        paths = Paths(**self.paths)
        missing = [TASKS[task].spec.model_validate(spec).run_id for task, spec, stale in self.cells
                   if finished(task, TASKS[task].spec.model_validate(spec), paths, stale) is None]
        if missing:
            raise UserError(f"not finished, nothing recorded: {', '.join(missing[:5])}")
        # the cluster named: launch() reuses finished cells and prepared caches as it does
        # for any submission; inside this job it runs the rest (the report) here
        record(Path(self.root), self.targets, cli=self.cli,
               env={**os.environ, "PIXBENCH_CLUSTER": self.cluster})
        return {"recorded": len(self.cells)}

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        return DelayedSubmission(RecordJob(self.root, self.targets, self.cells, self.paths,
                                           self.cluster, self.cli))


def _submit_group(executor, jobs: list) -> list:
    if len(jobs) == 1:
        return [executor.submit(jobs[0])]
    with executor.batch():  # one sbatch: a job array
        return [executor.submit(job) for job in jobs]


def submit_cells(cells: list, *, profile, folder: Path, paths: dict) -> dict[str, object]:
    """Submit every pending cell (not `done`, not stateless) once its parents are submitted;
    returns {cell name: submitit job}."""
    from pixbench.cluster import make_executor
    from pixbench.launch import TaskJob
    from pixbench.tasks.table import STATELESS

    by_name = {c.name: c for c in cells}
    jobs: dict[str, object] = {}
    todo = [c for c in cells if not c.done and c.task not in STATELESS]
    while todo:
        groups = defaultdict(list)
        for cell in todo:
            waits = [p for p in cell.parents if not by_name[p].done]
            if all(p in jobs for p in waits):
                deps = tuple(sorted({jobs[p].job_id for p in waits}))
                groups[(cell.stage, cell.task, deps)].append(cell)
        if not groups:
            raise UserError("the pipeline has a cycle or a pending report or verify upstream of a cell: "
                            + ", ".join(c.name for c in todo[:5]))
        for (stage, task, deps), group in groups.items():
            executor = make_executor(profile, folder, f"pb-{stage}", task, list(deps))
            payload = [TaskJob(c.task, c.spec.canonical(), paths, c.stale, c.device) for c in group]
            jobs.update(zip((c.name for c in group), _submit_group(executor, payload)))
        todo = [c for c in todo if c.name not in jobs]
    return jobs


def submit_study(cells: list, *, root: Path, targets: list[str], cluster: str, folder: Path,
                 study_id: str, cli: CommandLine) -> dict:
    """Submit the pending cells and the record job (which plans the cells again through
    `cli`); write and return the study's state."""
    from pixbench.cluster import make_executor
    from pixbench.config import Paths
    from pixbench.launch import _abs_paths, load_task_cluster
    from pixbench.tasks.table import STATELESS

    profile = load_task_cluster(cluster)
    paths = _abs_paths(Paths())
    folder.mkdir(parents=True, exist_ok=True)
    jobs = submit_cells(cells, profile=profile, folder=folder, paths=paths)
    # afterok is transitive: waiting for the jobs nothing else waits for is waiting for all
    waited = {p for c in cells if c.name in jobs for p in c.parents if p in jobs}
    sinks = sorted(jobs[n].job_id for n in jobs if n not in waited)
    record = RecordJob(str(root), targets, [(c.task, c.spec.canonical(), c.stale) for c in cells
                                            if c.task not in STATELESS], paths, cluster, cli)
    executor = make_executor(profile, folder, "pb-record", "report", sinks)
    record_job = executor.submit(record)
    rows = [_row(c, jobs.get(c.name, record_job if c.task in STATELESS else None))
            for c in cells]
    if not any(c.task in STATELESS for c in cells):
        rows.append({"name": RECORD, "stage": RECORD, "task": "dvc repro", "run_id": RECORD,
                     "parents": sorted(jobs), "job_id": record_job.job_id,
                     "log": str(record_job.paths.stderr)})
    state = {"id": study_id, "created": datetime.datetime.now().isoformat(timespec="seconds"),
             "root": str(root), "targets": targets, "cluster": cluster, "folder": str(folder),
             "cells": rows}
    write_state(folder, state)
    return state


def _row(cell, job) -> dict:
    return {"name": cell.name, "stage": cell.stage, "task": cell.task, "run_id": cell.run_id,
            "parents": cell.parents, "job_id": job.job_id if job is not None else None,
            "log": str(job.paths.stderr) if job is not None else None}
