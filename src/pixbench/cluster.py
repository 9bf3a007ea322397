"""SLURM cluster profiles (slurm/clusters/<name>.yaml) and submitit executors.

A base module: the data layer's sharded prepare (data/shards.py), the task launcher (launch.py)
and the study submit jobs through it. It knows nothing of the task table: a caller that can see
it passes the task names (launch.load_task_cluster) so a misspelt `tasks:` key is refused.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pixbench.errors import UserError
from pixbench.names import check_name

CLUSTER_DIR = Path(__file__).resolve().parents[2] / "slurm" / "clusters"


# The resources a task's job may set in a profile's `tasks:` section; unset keys take the
# profile's top-level values.
RESOURCE_KEYS = ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb",
                 "timeout_min")


class TaskResources(BaseModel):
    """One task's job resources (slurm/clusters/<name>.yaml: tasks.<task>)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    tasks_per_node: int | None = Field(None, ge=1)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int | None = Field(None, ge=1)


class ClusterProfile(BaseModel):
    """A SLURM cluster profile (slurm/clusters/<name>.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str = Field(description="SLURM partition (--partition).")
    account: str | None = Field(None, description="Account to charge (--account).")
    qos: str | None = Field(None, description="Quality of service (--qos).")
    constraint: str | None = Field(None, description="Node features (--constraint), e.g. h100.")
    nodes: int = Field(1, ge=1, description="Nodes per job.")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node; one DDP rank per GPU.")
    tasks_per_node: int = Field(1, ge=1, description="Processes per node (DDP ranks); set to "
                                "gpus_per_node on GPU clusters.")
    cpus_per_task: int = Field(2, ge=1, description="CPU cores per task.")
    mem_gb: float = Field(8, gt=0, description="Memory per node in GB.")
    timeout_min: int = Field(60, ge=1, description="Time limit per job (minutes); jobs past "
                             "it are requeued and resume.")
    signal_delay_s: int = Field(120, ge=0, description="Seconds before the limit that SLURM "
                                "sends USR2 so the job can requeue itself.")
    array_parallelism: int = Field(64, ge=1, description="Max array tasks running at once.")
    max_requeues: int = Field(20, ge=0, description="Max preemption/timeout requeues per job.")
    setup: list[str] = Field(default_factory=list, description="Shell lines run before the "
                             "task (module load, source a venv...).")
    tasks: dict[str, TaskResources] = Field(default_factory=dict, description="Per-task "
                                            "resources (keys of tasks/table.py TASKS); unset keys "
                                            "take the values above.")

    def resources(self, task: str | None) -> dict:
        """The job resources of `task`: its `tasks:` entry over the top-level values. A task
        that sets gpus_per_node but not tasks_per_node gets one rank per GPU (at least one)."""
        own = self.tasks[task].model_dump(exclude_none=True) if task in self.tasks else {}
        if "gpus_per_node" in own and "tasks_per_node" not in own:
            own["tasks_per_node"] = max(1, own["gpus_per_node"])
        return {k: own.get(k, getattr(self, k)) for k in RESOURCE_KEYS}


def cluster_dir() -> Path:
    return Path(os.environ.get("PIXBENCH_CLUSTER_DIR", CLUSTER_DIR))


def load_cluster(name: str, source: str = "--cluster",
                 known_tasks: Collection[str] | None = None) -> ClusterProfile:
    """The profile slurm/clusters/NAME.yaml, checked as params are: an unknown name, an
    unreadable or broken file, an unknown key or a bad value is one line naming it (`source`:
    where the name came from, --cluster or PIXBENCH_CLUSTER). With `known_tasks`, a `tasks:`
    key that is not one of them is refused too (it would silently take the top-level values)."""
    check_name(name, source)  # a file name under the cluster dir, never a path
    path = cluster_dir() / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in cluster_dir().glob("*.yaml"))
        raise UserError(f"{source}={name}: cluster profile not found: {path} (known: "
                        f"{', '.join(known) or 'none'})")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read the cluster profile ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (a cluster profile is YAML)") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"{path}: invalid YAML{at}") from None
    if not isinstance(data, dict | None):
        raise UserError(f"{path}: a cluster profile is a mapping of keys (partition: ...), "
                        f"not a {type(data).__name__}")
    try:
        profile = ClusterProfile.model_validate(data or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise UserError(f"{path}: {'.'.join(map(str, err['loc']))}: {msg}") from None
    unknown = sorted(set(profile.tasks) - set(known_tasks)) if known_tasks is not None else []
    if unknown:
        raise UserError(f"{path}: tasks: unknown task {unknown[0]!r} (known: "
                        f"{', '.join(sorted(known_tasks))})")
    return profile


def make_executor(profile: ClusterProfile, folder: Path, name: str, task: str | None = None,
                  dependency: list[str] | None = None):
    """A submitit executor for `task`'s resources; `dependency`: job ids that must all end OK
    first (`afterok`); if one fails SLURM cancels this job too (`--kill-on-invalid-dep`)."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm",
                                     slurm_max_num_timeout=profile.max_requeues)
    extra = {k: v for k, v in (("account", profile.account), ("qos", profile.qos),
                               ("constraint", profile.constraint)) if v}
    if dependency:
        extra.update(dependency="afterok:" + ":".join(dependency), kill_on_invalid_dep="yes")
    res = profile.resources(task)
    executor.update_parameters(
        name=name, slurm_partition=profile.partition, nodes=res["nodes"],
        tasks_per_node=res["tasks_per_node"], cpus_per_task=res["cpus_per_task"],
        gpus_per_node=res["gpus_per_node"] or None, mem_gb=res["mem_gb"],
        timeout_min=res["timeout_min"], slurm_signal_delay_s=profile.signal_delay_s,
        slurm_array_parallelism=profile.array_parallelism,
        slurm_setup=profile.setup or None, slurm_additional_parameters=extra or None)
    return executor


def wait_for(job: Any, label: str, poll_s: float = 1.0) -> Any:
    """Block until the job ends, showing its state; return its result or raise a clear error."""
    import submitit
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(f"{label}: job {job.job_id} submitted") as status:
        while not job.done():
            status.update(f"{label}: job {job.job_id} {job.state}")
            time.sleep(poll_s)
    try:
        return job.result()
    except submitit.core.utils.FailedJobError as exc:
        print(str(exc), file=sys.stderr)  # includes the remote traceback
        raise UserError(f"{label}: job {job.job_id} failed (remote traceback above; logs in "
                        f"{job.paths.folder})") from None
    except submitit.core.utils.UncompletedJobError as exc:
        raise UserError(f"{label}: job {job.job_id} ended without a result "
                        f"({job.state}): {str(exc).splitlines()[0]}") from None


def in_slurm_job() -> bool:
    """Inside a job submitit started on SLURM (its batch script exports this)."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"

