"""`pixbench classify run` (one cell) and `pixbench sweep` (every pending cell of the sweep)."""

from __future__ import annotations

import json
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


@command("sweep")
def sweep_cmd(launcher: LauncherOpt = None, cluster: ClusterOpt = None, wait: WaitOpt = True,
              params_path: ParamsOpt = PARAMS_FILE, profile: ProfileOpt = None) -> None:
    """Run every pending cell of params.yaml's sweep (one SLURM job array); skip finished ones.

    A later `dvc repro` records finished cells without re-running them.
    """
    from pixbench.config import Paths, make_classify_spec
    from pixbench.launch import sweep

    check_run_flags(launcher=launcher, cluster=cluster)
    params = load_params(params_path, profile)
    specs = [make_classify_spec(params, size=z, patch=p, seed=s) for z in params.sweep.sizes
             for p in params.sweep.patches for s in params.sweep.seeds]
    rows = sweep(specs, Paths(), launcher=launcher, cluster=cluster, wait=wait)
    for r in rows:
        typer.echo(json.dumps({k: r[k] for k in ("run_id", "state", "job_id", "top1", "error")
                               if k in r}))
    if any(r["state"] == "FAILED" for r in rows):
        raise UserError(f"{sum(r['state'] == 'FAILED' for r in rows)} of {len(rows)} cells failed")
