"""`pixbench data prepare --launcher slurm --shards K`: an ImageFolder prepare as a SLURM job
array of K decode tasks plus one merge job.

The submitting process makes the plan (stream.make_plan: the scan streamed into the work
dir's files, memory independent of N; workdir.py), then submits K `ShardJob`s (each reads the
paths of its contiguous, disjoint range of chunks, the first to start creates the output
arrays, each reserves and decodes its rows, with as many workers as fit the job's --mem) and a
`MergeJob` that starts after all of them succeed (`--dependency=afterok`), checks itself that
every chunk is done (check_all_done: SLURM let a merge start whose pending shard had been
cancelled) and runs stream.finish. A requeued or re-submitted shard skips the chunks it
already marked done; re-running the same command after a failure submits only the shards
with work left.
Shard jobs hold the cache's prepare lock shared (they write disjoint chunks), the merge job
exclusively (lock.py); a plan that another prepare of the cache finished meanwhile leaves a
shard nothing to do and the merge that prepare's cache.

Uses pixbench.cluster's profile and executor read-only; what cluster.py could offer instead
(an executor with extra sbatch parameters) is noted in the merge submission below.
The output is written by several nodes into disjoint byte ranges of one file: fine on Lustre
and GPFS; on NFS mount the cache root with `sync`-safe defaults (no `nocto`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from pixbench.data import cache, lock, stream
from pixbench.data.prepare import capped_workers
from pixbench.errors import UserError


class ShardJob(Checkpointable):
    """Array task k of K: decode its range of chunks (resumes from the done markers), with
    `workers` processes at most as many as fit `mem_gb` (default: the job's --mem; see
    prepare.capped_workers), decided on the node that runs it."""

    def __init__(self, work: str, k: int, shards: int, workers: int | None,
                 mem_gb: float | None = None) -> None:
        self.work, self.k, self.shards, self.workers = work, k, shards, workers
        self.mem_gb = mem_gb

    def __call__(self) -> dict:
        work = Path(self.work)
        with lock.holding(stream.cache_of(work), shared=True):
            if not (work / stream.PLAN).is_file():  # merged by another prepare of the cache
                return {"shard": self.k, "chunks": 0, "decoded": 0}
            plan = stream.read_plan(work)
            ids = stream.shard(stream.chunk_ids(plan), self.k, self.shards)
            workers = capped_workers(self.workers, plan["image_size"], plan["alloc"], self.mem_gb)
            n = stream.decode_chunks(work, ids, workers)
        return {"shard": self.k, "chunks": len(ids), "decoded": n}

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        return DelayedSubmission(ShardJob(self.work, self.k, self.shards, self.workers,
                                          self.mem_gb))


class MergeJob(Checkpointable):
    """After every shard: statistics, hashes, manifest, swap the cache in. `shards`: how many
    array tasks decoded the plan, to name the one whose chunks are missing."""

    def __init__(self, work: str, out_dir: str, run_id: str, shards: int | None = None) -> None:
        self.work, self.out_dir, self.run_id, self.shards = work, out_dir, run_id, shards

    def __call__(self) -> dict:
        m = merge(Path(self.work), self.shards)
        return {"run_id": self.run_id, "path": self.out_dir,
                "counts": m["counts"], "image_size": m["image_size"],
                "channels": m["channels"], "num_classes": m["num_classes"]}

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        return DelayedSubmission(MergeJob(self.work, self.out_dir, self.run_id, self.shards))


def check_all_done(work: Path, shards: int | None) -> None:
    """The merge's own check that every shard finished. SLURM's afterok is not relied on: on
    the local cluster (22.05) an array task cancelled while still pending never ran, left no
    accounting record, and the merge depending on it started (tests/test_prepare_slurm.py,
    issue 26). A one-line Incomplete naming the shards and chunks without a done marker,
    before anything is written; the work dir stays for a re-run to finish."""
    ids = stream.chunk_ids(stream.read_plan(work))
    gone = stream.missing(work, ids)
    if not gone:
        return
    which = ""
    if shards:
        todo = set(gone)
        ks = [k for k in range(shards) if todo.intersection(stream.shard(ids, k, shards))]
        which = f"shard{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))} of {shards}: "
    raise stream.Incomplete(
        f"{stream.cache_of(work)}: not merged: {which}{len(gone)} of {len(ids)} chunks are "
        f"not decoded ({stream.chunk_names(gone)}; a shard failed, was cancelled or is still "
        "running); nothing was written; re-run `pixbench data prepare` to finish them")


def merge(work: Path, shards: int | None = None) -> dict:
    """stream.finish under the prepare lock, once every chunk is marked done (check_all_done);
    a refusal (unreadable files, a class left empty) removes the work dir. A plan already
    finished by another prepare of the cache: its cache."""
    import shutil

    out = stream.cache_of(work)
    with lock.holding(out):
        if not (work / stream.PLAN).is_file() and not stream.merged(work):
            if not (out / cache.MANIFEST).is_file():
                raise UserError(f"{work}: the prepare's plan is gone and {out} holds no cache; "
                                "re-run `pixbench data prepare`")
            return cache.load_cache(out).manifest
        if not stream.merged(work):  # (merged: killed before its swap-in; finish ends it)
            check_all_done(work, shards)
        try:
            return stream.finish(work)
        except stream.Incomplete:
            raise
        except UserError:
            shutil.rmtree(work, ignore_errors=True)
            raise


def pending_shards(work: Path, shards: int) -> list[int]:
    """The shards with chunks not yet marked done."""
    ids = stream.chunk_ids(stream.read_plan(work))
    return [k for k in range(shards)
            if any(not stream.is_done(work, s, i) for s, i in stream.shard(ids, k, shards))]


def submit(work: Path, run_id: str, *, shards: int, workers: int | None, cluster: str,
           logs: Path, wait: bool, mem_gb: float | None = None) -> dict:
    """Submit the pending shards as one array, then the merge job depending on them."""
    from pixbench.cluster import load_cluster, make_executor, wait_for

    profile = load_cluster(cluster)
    todo = pending_shards(work, shards)
    folder = logs.resolve() / "submitit"
    jobs = []
    if todo:
        executor = make_executor(profile, folder, f"{run_id}-shards")
        with executor.batch():
            jobs = [executor.submit(ShardJob(str(work), k, shards, workers, mem_gb))
                    for k in todo]
    # after every shard ended OK; a failed or cancelled shard cancels it (--kill-on-invalid-dep)
    # instead of leaving it PENDING (DependencyNeverSatisfied) forever
    executor = make_executor(profile, folder, f"{run_id}-merge",
                             dependency=[j.job_id for j in jobs] or None)
    merge_job = executor.submit(MergeJob(str(work), stream.read_plan(work)["out_dir"], run_id,
                                         shards))
    ids = {"shard_jobs": [j.job_id for j in jobs], "job_id": merge_job.job_id}
    if not wait:
        return {"run_id": run_id, **ids, "state": "SUBMITTED"}
    for j in jobs:
        wait_for(j, f"{run_id} shard")
    return {**wait_for(merge_job, f"{run_id} merge"), **ids, "state": "DONE"}
