"""Where a task runs: here (local) or as a SLURM job through submitit.

Every task is a `Checkpointable` callable holding only its spec; its `checkpoint()` resubmits a
fresh instance, which resumes from the run's one checkpoint path. submitit calls it from its
SIGUSR2 handler (the time-limit warning, or preemption); while a run trains, the runner holds
that signal until the next step boundary, writes ckpt/last.pt, and only then hands it to
submitit's handler (tasks/signals.py), which calls `checkpoint()` and requeues. So a requeued
job redoes at most the step in flight and never resumes from a different file than it saves to.
SIGTERM (preemption, scancel, `scontrol requeue`) also checkpoints at the next step boundary;
submitit lets the job carry on until SIGUSR2 or SIGKILL follows.
"""

from __future__ import annotations

import os
import shutil
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from submitit.helpers import Checkpointable, DelayedSubmission  # ~0.3 s; launch.py is imported lazily

from pixbench.cluster import (ClusterProfile, in_slurm_job, load_cluster, make_executor,
                              wait_for)
from pixbench.errors import UserError
from pixbench.tasks.table import STATELESS, TASKS
from pixbench.tasks.table import task as task_entry

Launcher = Literal["local", "slurm"]


def load_task_cluster(name: str, source: str = "--cluster") -> ClusterProfile:
    """The cluster profile (cluster.load_cluster) with its `tasks:` keys checked against the
    task table, which the base cluster module cannot import: a misspelt task there would
    silently run with the profile's top-level resources."""
    return load_cluster(name, source, known_tasks=TASKS)


def resolve_launcher(launcher: str | None, cluster: str | None) -> tuple[Launcher, str | None]:
    """--launcher wins; else slurm when a cluster is named (flag or PIXBENCH_CLUSTER), else local.
    A cluster named either way is loaded and checked even when the task runs here (a finished
    cell, --launcher local): a typo in it is refused, never ignored without a word."""
    source = "--cluster"
    if not cluster and os.environ.get("PIXBENCH_CLUSTER"):
        cluster, source = os.environ["PIXBENCH_CLUSTER"], "PIXBENCH_CLUSTER"
    if launcher is None:
        launcher = "slurm" if cluster else "local"
    if launcher not in ("local", "slurm"):
        raise UserError(f"--launcher must be 'local' or 'slurm', not {launcher!r}")
    if cluster:
        load_task_cluster(cluster, source)
    if launcher == "slurm":
        if not cluster:
            raise UserError("--launcher slurm needs --cluster NAME (or PIXBENCH_CLUSTER)")
        if shutil.which("sbatch") is None:
            raise UserError("--launcher slurm: sbatch is not on PATH (no SLURM here)")
    return launcher, cluster


# ------------------------------------------------------------------------------------ the task


class TaskJob(Checkpointable):
    """One run of a task, picklable: the resolved spec and absolute paths, nothing else."""

    def __init__(self, task: str, spec: dict, paths: dict, stale: str = "error",
                 device: str = "auto", progress: bool = False) -> None:
        self.task, self.spec, self.paths, self.stale, self.device = task, spec, paths, stale, device
        self.progress = progress  # progress lines with an ETA (on stderr: the cell's log)

    def __call__(self) -> dict:
        from pixbench.config import Paths
        from pixbench.distributed import distributed_from_slurm

        with distributed_from_slurm():
            entry = task_entry(self.task)
            return entry.run(entry.spec.model_validate(self.spec), Paths(**self.paths),
                             stale=self.stale, device=self.device,
                             progress=getattr(self, "progress", False))

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Requeue a fresh instance; it resumes from the run's ckpt/last.pt, which the runner
        has written at the step boundary before handing SIGUSR2 to submitit. The spec is the
        same, so a requeued job must never discard the run dir: stale='error'."""
        return DelayedSubmission(TaskJob(self.task, self.spec, self.paths, "error", self.device))


# ------------------------------------------------------------------------------ submit / sweep


def _abs_paths(paths) -> dict:
    """Absolute machine paths: the job must write where the submitting shell would."""
    return {k: (str(Path(v).resolve()) if v is not None else None)
            for k, v in paths.model_dump().items()}


def _finished_alone(spec, paths, stale: str) -> dict | None:
    """A single process's finished run of this spec, re-published, before the task module (and
    torch, timm: ~4-5 s of CPU) is imported: what `dvc repro` does for each cell that
    `pixbench sweep` already ran. Under torchrun the runner decides, with every rank."""
    from pixbench.tasks.rundir import finished_metrics, publish

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    run_dir = paths.run_dir(spec.profile, spec.run_id)
    done = finished_metrics(run_dir, spec, stale, paths.runs_dir, delete=False)
    if done is not None:
        publish(paths, spec, done, run_dir / "curve.json")
    return done


# While a plan is being collected (the study reads each stage's command through the CLI),
# launch() records (task, spec, stale, device) instead of running anything.
PLAN: ContextVar[list | None] = ContextVar("pixbench_launch_plan", default=None)


def finished(task: str, spec, paths, stale: str = "restart") -> dict | None:
    """The metrics of a finished cell of this spec, or None: the check `Run.open` makes (same
    spec digest, metrics.json present), read-only; for `prepare`, a cache whose manifest was
    written for the same data config. A report has no such state: it is never finished."""
    if task in STATELESS:
        return None
    if task == "prepare":
        return _prepared(spec, paths)
    from pixbench.tasks.rundir import finished_metrics

    return finished_metrics(paths.run_dir(spec.profile, spec.run_id), spec, stale,
                            paths.runs_dir, delete=False)


_SAID: set[str] = set()  # caches whose check this process reported (finished runs per cell)


def _prepared(spec, paths) -> dict | None:
    """A cache that loads (manifest checksum, sizes, shapes, quick hashes: the checks training
    makes) and was written for this data config; else None (prepare writes a fresh one). What
    that trusted is said once (a sampled hash of large files: `data verify` is the full check).
    Its identity for DVC (tasks/prepare.py) is written where a prepare that ran elsewhere (a
    SLURM shard merge) left none: derived from the checked manifest, so a recording never
    misses it."""
    import json
    import sys

    from pixbench.data.cache import load_cache
    from pixbench.runio import atomic_write_json
    from pixbench.tasks.prepare import data_identity

    gen = spec.track == "gen"
    out = paths.gen_cache_for(spec.profile) if gen else paths.cache_for(spec.profile)
    if not (out / "manifest.json").is_file():
        return None
    try:
        manifest = load_cache(out, verify=True).manifest
    except UserError:
        return None
    if manifest.get("spec") != json.loads(json.dumps(spec.data.model_dump(mode="json"))):
        return None
    identity = data_identity(paths, spec)
    try:
        same = json.loads(identity.read_text()) == manifest
    except (OSError, ValueError):
        same = False
    if not same:
        atomic_write_json(identity, manifest)
    checked = what_verify_checks(out, manifest)
    if checked not in _SAID:
        _SAID.add(checked)
        print(f"note: {spec.run_id} reuses {checked}", file=sys.stderr, flush=True)
    return {"run_id": spec.run_id, "path": str(out), "checked": checked,
            "counts": manifest["counts"],
            "image_size": manifest["image_size"], "channels": manifest["channels"],
            "num_classes": manifest["num_classes"]}


def what_verify_checks(cache_dir, manifest: dict) -> str:
    """What `load_cache(verify=True)` checked of this cache, in one line (`data verify`: all)."""
    from pixbench.data.cache import FULL_HASH_MAX, PROBE_BLOCK, PROBE_BLOCKS

    big = [f"{n} ({i['bytes'] / (1 << 30):.2f} GiB)" for n, i in sorted(manifest["files"].items())
           if i["bytes"] > FULL_HASH_MAX]
    if not big:
        return f"{cache_dir}: every byte checked against its manifest's sha256"
    sampled = ", ".join(big)
    return (f"{cache_dir}: checked its manifest, sizes and shapes, every byte of its files up to "
            f"{FULL_HASH_MAX >> 20} MiB and a sample of {PROBE_BLOCKS} x {PROBE_BLOCK >> 10} KiB "
            f"of {sampled}; `pixbench data verify` reads every byte")


def launch(spec, paths, *, launcher: str | None, cluster: str | None,
           stale: str = "error", device: str = "auto", wait: bool = True) -> dict:
    """Run one task spec here or on SLURM; blocking mode returns the metrics. A finished cell
    (same spec digest) never goes to SLURM: it runs here, where `Run.open` reuses it (and
    publishes its metrics for DVC); a prepared cache of the same data config is reused as it
    is. Locally `prepare` always writes the cache afresh (raw data may have changed). Inside a
    submitit SLURM job (the study's record job runs `dvc repro` there) the task runs in it."""
    task = spec.task  # the spec names its task (tasks/table.py)
    plan = PLAN.get()
    if plan is not None:
        plan.append((task, spec, stale, device))
        return {}
    kind, cluster = resolve_launcher(launcher, cluster)
    done = finished(task, spec, paths, stale) if kind == "slurm" else None
    if task == "prepare" and done is not None:
        return {**done, "state": "DONE"}
    if kind == "local" or done is not None or in_slurm_job():
        if task not in STATELESS:
            alone = _finished_alone(spec, paths, stale)
            if alone is not None:
                return alone
        return task_entry(task).run(spec, paths, stale=stale, device=device)
    job = TaskJob(task, spec.canonical(), _abs_paths(paths), stale, device)
    profile = load_task_cluster(cluster)
    executor = make_executor(profile, paths.logs_dir.resolve() / "submitit", spec.run_id, task)
    submitted = executor.submit(job)
    if not wait:
        return {"run_id": spec.run_id, "job_id": submitted.job_id, "state": "SUBMITTED",
                "logs": str(submitted.paths.folder)}
    return wait_for(submitted, spec.run_id)


def sweep(specs: list, paths, *, launcher: str | None, cluster: str | None,
          wait: bool = True) -> list[dict]:
    """Submit every pending cell (specs of one task) as one job array; finished cells (same
    spec digest) are skipped."""
    task = specs[0].task if specs else "classify"
    pending, rows = [], []
    for spec in specs:
        done = finished(task, spec, paths) is not None
        (rows if done else pending).append({"run_id": spec.run_id, "state": "DONE"} if done else spec)
    kind, cluster = resolve_launcher(launcher, cluster)
    if not pending:
        return rows
    if kind == "local":
        entry = task_entry(task)
        return rows + [{"run_id": s.run_id, "state": "DONE", **entry.run(s, paths, stale="restart")}
                       for s in pending]
    executor = make_executor(load_task_cluster(cluster), paths.logs_dir.resolve() / "submitit",
                             f"pixbench-{task}-sweep", task)
    with executor.batch():
        jobs = [executor.submit(TaskJob(task, s.canonical(), _abs_paths(paths), "restart"))
                for s in pending]
    if not wait:
        return rows + [{"run_id": s.run_id, "job_id": j.job_id, "state": "SUBMITTED"}
                       for s, j in zip(pending, jobs)]
    for s, j in zip(pending, jobs):
        try:
            rows.append({"run_id": s.run_id, "job_id": j.job_id, "state": "DONE",
                         **wait_for(j, s.run_id)})
        except UserError as exc:
            rows.append({"run_id": s.run_id, "job_id": j.job_id, "state": "FAILED",
                         "error": str(exc)})
    return rows
