"""`pixbench data prepare` and `pixbench data verify`: the dataset caches."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pixbench.cli.options import (PARAMS_FILE, ClusterOpt, LauncherOpt, ParamsOpt, ProfileOpt,
                                  WaitOpt, check_run_flags, load_params, noun)

app = noun("data", help="Prepare and verify dataset caches.")

GenOpt = Annotated[bool, typer.Option(
    "--gen", help="The generation track's images (profiles.P.gen.data) instead of the "
                  "classification cache.")]
KEYS = ("run_id", "path", "counts", "image_size", "channels", "num_classes", "job_id",
        "shard_jobs", "state")


@app.command("prepare")
def data_prepare(params_path: ParamsOpt = PARAMS_FILE, profile: ProfileOpt = None,
                 gen: GenOpt = False,
                 workers: Annotated[Optional[int], typer.Option(
                     "--workers", min=1, max=4096, help="Image decoding processes (per SLURM "
                     "task); default: every core this process may use.")] = None,
                 shards: Annotated[int, typer.Option(
                     "--shards", min=1, max=10000, help="ImageFolder with --launcher slurm: "
                     "decode as a job array of this many tasks, then one merge job.")] = 1,
                 mem_gb: Annotated[Optional[float], typer.Option(
                     "--mem-gb", min=0.01, max=1e6, help="Memory for the image decoding "
                     "processes, GiB (per SLURM task): fewer processes than --workers when "
                     "they would not fit (a note says so); the cache's bytes are the same. "
                     "Default: 3/4 of the SLURM job's --mem, or of the node's available "
                     "memory.")] = None,
                 launcher: LauncherOpt = None, cluster: ClusterOpt = None,
                 wait: WaitOpt = True) -> None:
    """Build the uint8 cache (arrays + labels + manifest) for the profile's data section. An
    interrupted ImageFolder prepare resumes where it stopped when run again."""
    import json

    from pixbench.config import Paths
    from pixbench.config.pipeline import make_prepare_spec
    from pixbench.launch import resolve_launcher

    check_run_flags(launcher=launcher, cluster=cluster)
    spec = make_prepare_spec(load_params(params_path, profile), gen=gen)
    paths = Paths()
    kind, cluster = resolve_launcher(launcher, cluster)
    if kind == "slurm" and spec.data.source == "imagefolder" and shards > 1:
        metrics = _submit_shards(spec, paths, cluster, shards, workers, wait, mem_gb)
    elif kind == "local" and (workers is not None or mem_gb is not None):
        from pixbench.tasks.prepare import prepare_and_publish

        metrics = prepare_and_publish(spec, paths, workers=workers, mem_gb=mem_gb)
    else:  # launch.py's TaskJob carries no worker count: a job decodes on all its cores
        # that fit the job's --mem (prepare.capped_workers)
        from pixbench.launch import launch

        if kind == "slurm" and mem_gb is not None:
            typer.echo("note: --mem-gb is for local prepares and --shards; this SLURM job "
                       "fits its decode workers to its own --mem", err=True)

        metrics = launch(spec, paths, launcher=kind, cluster=cluster, wait=wait,
                         stale="error", device="cpu")
    typer.echo(json.dumps({k: metrics[k] for k in KEYS if k in metrics}))


def _submit_shards(spec, paths, cluster: str, shards: int, workers: int | None,
                   wait: bool, mem_gb: float | None) -> dict:
    """The plan here (the scan, streamed into the work dir; the output arrays are made by the
    first shard), then the shards as a job array and the merge job after them. Chunks are sized
    for shards x workers per shard (--workers, else the cluster profile's cpus_per_task: what a
    shard job gets)."""
    from pixbench.cluster import load_cluster
    from pixbench.data import lock, shards as sharding
    from pixbench.data.prepare import folder_root, cache_path, check_writable, refusal_cleans
    from pixbench.data.stream import make_plan

    out = cache_path(spec, paths).resolve()
    check_writable(out)
    root = folder_root(spec.data, paths.data_root)
    per_task = workers or load_cluster(cluster).resources(None)["cpus_per_task"]
    with refusal_cleans(out) as held, lock.holding(out):  # the jobs take it again (shards.py)
        work = make_plan(spec.data, out, root.resolve(), parts=shards * per_task)
        held.append(work)
    return sharding.submit(work, spec.run_id, shards=shards, workers=workers, cluster=cluster,
                           logs=paths.logs_dir, wait=wait, mem_gb=mem_gb)


@app.command("verify")
def data_verify(params_path: ParamsOpt = PARAMS_FILE, profile: ProfileOpt = None,
                gen: GenOpt = False) -> None:
    """Re-hash every byte of the profile's cache against its manifest (loads only check sizes,
    headers and sampled blocks). Exit 0 and a JSON line when intact; else one line naming the
    file."""
    import json

    from pixbench.config import Paths
    from pixbench.config.pipeline import make_prepare_spec
    from pixbench.data.cache import verify_cache
    from pixbench.data.prepare import cache_path

    spec = make_prepare_spec(load_params(params_path, profile), gen=gen)
    path = cache_path(spec, Paths())
    m = verify_cache(path)
    typer.echo(json.dumps({"path": str(path), "verified": "sha256 of every file",
                           "bytes": sum(f["bytes"] for f in m["files"].values()),
                           "counts": m["counts"]}))
