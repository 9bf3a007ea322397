"""`pixbench classify run` (one cell) and `pixbench sweep` (every pending cell of the sweep)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pixbench.cli.options import (PARAMS_FILE, ClusterOpt, LauncherOpt, ParamsOpt, PatchOpt,
                                  ProfileOpt, SeedOpt, WaitOpt, check_run_flags, command,
                                  load_params, noun, size_option, spec_command)
from pixbench.errors import UserError

app = noun("classify", help="Supervised classification track.")

SizeOpt = size_option("Model size key (xxs, xs, m, t, s, b, l); default: sweep.sizes[0].")
VariantOpt = Annotated[Optional[str], typer.Option(
    "--variant", help="A locality ablation of params.yaml's locality.variants.")]
KEYS = ("run_id", "top1", "top5", "tokens", "params", "gflops_train", "train_img_per_s",
        "infer_img_per_s", "peak_mem_mb", "wall_s", "job_id", "state", "logs")


@spec_command(app, "run", keys=KEYS)
def classify_run(params, patch: PatchOpt, seed: SeedOpt = 0, size: SizeOpt = None,
                 variant: VariantOpt = None):
    """Train and evaluate one ViT cell (here or on SLURM); resumes from its checkpoint."""
    from pixbench.config import make_classify_spec

    return make_classify_spec(params, size=size, patch=patch, seed=seed, variant=variant)


ListOpt = Annotated[Optional[str], typer.Option(help="Comma-separated override of the "
                                                 "profile's sweep, for a quick look.")]
JobsOpt = Annotated[Optional[int], typer.Option(
    "--jobs", "-j", min=1, help="Cells run at once here; default: the usable cores.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="Intra-op threads per cell; default: the usable cores / --jobs.")]


def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: not a comma-separated list of integers") from None
    if not out:
        raise UserError(f"{flag} {text!r}: empty")
    return out


@command("sweep")
def sweep_cmd(sizes: ListOpt = None, patches: ListOpt = None, seeds: ListOpt = None,
              jobs: JobsOpt = None, threads: ThreadsOpt = None,
              launcher: LauncherOpt = None, cluster: ClusterOpt = None, wait: WaitOpt = True,
              params_path: ParamsOpt = PARAMS_FILE, profile: ProfileOpt = None) -> None:
    """Run every pending classification cell of the profile's sweep (here, --jobs at a time,
    or as one SLURM job array); finished cells are reused. `--patches 1,7 --seeds 0` picks
    cells for a quick look. Prints the cost estimate first. Cells of the DVC study are then
    recorded in dvc.lock (`dvc status` stays clean); others are not the study's.
    """
    from pixbench.config import Paths, make_classify_spec
    from pixbench.launch import sweep

    check_run_flags(launcher=launcher, cluster=cluster)
    params = load_params(params_path, profile)
    sw = params.sweep
    size_list = [z for z in sizes.split(",") if z.strip()] if sizes else sw.sizes
    specs = [make_classify_spec(params, size=z, patch=p, seed=s) for z in size_list
             for p in (_ints(patches, "--patches") or sw.patches)
             for s in (_ints(seeds, "--seeds") or sw.seeds)]
    from pixbench.launch import resolve_launcher
    from pixbench.study.sweep import record_study_cells, run_here

    paths = Paths()
    print_estimate(params, specs, paths, jobs=jobs, threads=threads)
    if resolve_launcher(launcher, cluster)[0] == "local":
        rows = run_here(specs, jobs=jobs, threads=threads, paths=paths,
                        say=lambda line: typer.echo(line, err=True))
    else:
        rows = sweep(specs, paths, launcher=launcher, cluster=cluster, wait=wait)
    for r in rows:
        typer.echo(json.dumps({k: r[k] for k in ("run_id", "state", "job_id", "top1", "error")
                               if k in r}))
    if any(r["state"] == "FAILED" for r in rows):
        raise UserError(f"{sum(r['state'] == 'FAILED' for r in rows)} of {len(rows)} cells failed")
    recorded = record_study_cells(Path(params_path).resolve().parent, params, specs, paths)
    if recorded:
        typer.echo(f"sweep: {len(recorded)} cells of the DVC study recorded in dvc.lock", err=True)


def print_estimate(params, specs: list, paths, *, jobs: int | None,
                   threads: int | None) -> None:
    """The cost estimate of the cells, before anything trains (study/estimate.py), at the
    thread count each cell will run with."""
    import os

    from pixbench.study.estimate import estimate_lines

    cores = len(os.sched_getaffinity(0))
    jobs = jobs or cores
    for line in estimate_lines(params, specs, paths, threads=threads or max(1, cores // jobs),
                               jobs=jobs):
        typer.echo(line, err=True)
