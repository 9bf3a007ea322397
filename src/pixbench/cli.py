"""The `pixbench` command: thin Typer commands; heavy imports happen inside them.

Flags pick a run and where it runs; hyper-parameters come only from params.yaml.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pixbench.errors import UserError

app = typer.Typer(help="pixbench: pixel tokens vs patch tokens (arXiv 2406.09415), reproducibly.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Prepare dataset caches.", no_args_is_help=True)
classify_app = typer.Typer(help="Supervised classification track.", no_args_is_help=True)
app.add_typer(data_app, name="data")
mae_app = typer.Typer(help="MAE track: pre-train, fine-tune, linear probe, scratch baseline.",
                      no_args_is_help=True)
app.add_typer(classify_app, name="classify")
app.add_typer(mae_app, name="mae")

ParamsOpt = Annotated[Path, typer.Option("--params", help="The params file (hyper-parameters).")]
ProfileOpt = Annotated[Optional[str], typer.Option(
    "--profile", help="Run under another profile of params.yaml than its `profile` key.")]
LauncherOpt = Annotated[Optional[str], typer.Option(
    "--launcher", help="local or slurm; default: slurm when a cluster is named, else local.")]
ClusterOpt = Annotated[Optional[str], typer.Option(
    "--cluster", help="Cluster profile slurm/clusters/NAME.yaml (or PIXBENCH_CLUSTER).")]
PatchOpt = Annotated[int, typer.Option("--patch", help="Patch size; 1 = pixel tokens.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for init, order, augmentation, masks.")]
StaleOpt = Annotated[str, typer.Option(
    "--stale", help="A run dir left by another spec: 'error' or 'restart' (discard it).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
WaitOpt = Annotated[bool, typer.Option(
    "--wait/--no-wait", help="Block until SLURM jobs end and print their metrics.")]


def _check_stale(stale: str) -> None:
    if stale not in ("error", "restart"):
        raise UserError(f"--stale must be 'error' or 'restart', not {stale!r}")


def _params(path: Path, profile: str | None):
    from pixbench.config import load_params

    params = load_params(path)
    if profile is not None:
        if profile not in params.profiles:
            raise UserError(f"--profile {profile!r} is not one of {path}: profiles "
                            f"({', '.join(params.profiles)})")
        params = params.model_copy(update={"profile": profile})
    return params


@data_app.command("prepare")
def data_prepare(params_path: ParamsOpt = Path("params.yaml"), profile: ProfileOpt = None,
                 gen: Annotated[bool, typer.Option(
                     "--gen", help="Prepare the generation track's images (profiles.P.gen.data) "
                                   "instead of the classification cache.")] = False) -> None:
    """Build the uint8 cache (arrays + labels + manifest) for the profile's data section."""
    from pixbench.config import Paths
    from pixbench.data.prepare import prepare

    params = _params(params_path, profile)
    paths = Paths()
    if gen:
        if params.active.gen is None:
            raise UserError(f"{params_path}: profiles.{params.profile}.gen is not set")
        out, cfg = paths.gen_cache_for(params.profile), params.active.gen.data
    else:
        out, cfg = paths.cache_for(params.profile), params.active.data
    manifest = prepare(cfg, out, paths.data_root)
    typer.echo(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
               + f" images, {manifest['image_size']}x{manifest['image_size']}x"
                 f"{manifest['channels']}, {manifest['num_classes']} classes")


@classify_app.command("run")
def classify_run(
    patch: PatchOpt,
    seed: SeedOpt = 0,
    size: Annotated[Optional[str], typer.Option(
        "--size", help="Model size key (xxs, xs, m, t, s, b, l); default: sweep.sizes[0].")] = None,
    variant: Annotated[Optional[str], typer.Option(
        "--variant", help="A locality ablation of params.yaml's locality.variants.")] = None,
    stale: StaleOpt = "error",
    device: DeviceOpt = "auto",
    launcher: LauncherOpt = None,
    cluster: ClusterOpt = None,
    wait: WaitOpt = True,
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
) -> None:
    """Train and evaluate one ViT cell (here or on SLURM); resumes from its checkpoint."""
    from pixbench.config import Paths, make_classify_spec
    from pixbench.launch import launch

    _check_stale(stale)
    spec = make_classify_spec(_params(params_path, profile), size=size, patch=patch, seed=seed,
                              variant=variant)
    metrics = launch("classify", spec, Paths(), launcher=launcher, cluster=cluster, stale=stale,
                     device=device, wait=wait)
    keys = ("run_id", "top1", "top5", "tokens", "params", "gflops_train", "train_img_per_s",
            "infer_img_per_s", "peak_mem_mb", "wall_s", "job_id", "state", "logs")
    typer.echo(json.dumps({k: metrics[k] for k in keys if k in metrics}))


def _mae_command(task: str, patch: int, seed: int, size: str | None, target: str | None,
                 stale: str, device: str, launcher: str | None, cluster: str | None, wait: bool,
                 params_path: Path, profile: str | None) -> None:
    from pixbench.config import Paths, make_mae_spec, make_pretrain_spec
    from pixbench.launch import launch

    _check_stale(stale)
    params = _params(params_path, profile)
    spec = (make_pretrain_spec(params, size=size, patch=patch, seed=seed, target=target)
            if task == "mae-pretrain" else
            make_mae_spec(params, task=task, size=size, patch=patch, seed=seed, target=target))
    metrics = launch(task, spec, Paths(), launcher=launcher, cluster=cluster, stale=stale,
                     device=device, wait=wait)
    keys = ("run_id", "top1", "recon_loss", "tokens", "gflops_train", "train_img_per_s",
            "wall_s", "job_id", "state")
    typer.echo(json.dumps({k: metrics[k] for k in keys if k in metrics}))


def _register_mae(name: str, task: str, doc: str) -> None:
    def command(
        patch: PatchOpt,
        seed: SeedOpt = 0,
        size: Annotated[Optional[str], typer.Option(
            "--size", help="Model size key; default: mae_sweep.sizes[0].")] = None,
        target: Annotated[Optional[str], typer.Option(
            "--target", help="Pre-training target variant (mae_sweep.alt_target), if not the "
                             "profile's.")] = None,
        stale: StaleOpt = "error",
        device: DeviceOpt = "auto",
        launcher: LauncherOpt = None, cluster: ClusterOpt = None, wait: WaitOpt = True,
        params_path: ParamsOpt = Path("params.yaml"), profile: ProfileOpt = None,
    ) -> None:
        _mae_command(task, patch, seed, size, target, stale, device, launcher, cluster, wait,
                     params_path, profile)

    command.__doc__ = doc
    mae_app.command(name)(command)


_register_mae("pretrain", "mae-pretrain", "Masked-autoencoder pre-training of one cell.")
_register_mae("finetune", "mae-finetune", "Fine-tune the cell's pre-trained encoder (full).")
_register_mae("linprobe", "mae-linprobe", "Linear probe on the cell's frozen encoder.")
_register_mae("scratch", "mae-scratch", "The fine-tune recipe from random init (baseline).")


@app.command("sweep")
def sweep_cmd(
    launcher: LauncherOpt = None,
    cluster: ClusterOpt = None,
    wait: WaitOpt = True,
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
) -> None:
    """Run every pending cell of params.yaml's sweep (one SLURM job array); skip finished ones.

    A later `dvc repro` records finished cells without re-running them.
    """
    from pixbench.config import Paths, make_classify_spec
    from pixbench.launch import sweep

    params = _params(params_path, profile)
    specs = [make_classify_spec(params, size=z, patch=p, seed=s) for z in params.sweep.sizes
             for p in params.sweep.patches for s in params.sweep.seeds]
    rows = sweep("classify", specs, Paths(), launcher=launcher, cluster=cluster, wait=wait)
    for r in rows:
        typer.echo(json.dumps({k: r[k] for k in ("run_id", "state", "job_id", "top1", "error")
                               if k in r}))
    if any(r["state"] == "FAILED" for r in rows):
        raise UserError(f"{sum(r['state'] == 'FAILED' for r in rows)} of {len(rows)} cells failed")


@app.command("bench")
def bench_cmd(
    profile: Annotated[str, typer.Option(
        "--profile", help="auto | quick | cpu | cpu-compile | gpu (auto: gpu with CUDA, else cpu).")] = "auto",
    out: Annotated[Path, typer.Option("--out", help="Where the JSON, summary and plots go.")] = Path("reports/bench"),
    threads: Annotated[Optional[int], typer.Option(
        "--threads", help="CPU threads (default: the idle cores).")] = None,
) -> None:
    """Compute benchmarks: throughput, memory, MFU and scaling of pixel vs patch tokens."""
    from pixbench.bench.cli_bench import bench_command

    bench_command(profile, out, threads)


@app.command("report")
def report_cmd(params_path: ParamsOpt = Path("params.yaml"), profile: ProfileOpt = None) -> None:
    """Assemble the Markdown report and PNG plots from every metrics file of the profile."""
    from pixbench.config import Paths
    from pixbench.report import build_report

    params = _params(params_path, profile)
    out = build_report(params, Paths())
    typer.echo(f"wrote {out}")


from pixbench import cli_gen  # noqa: E402,F401  (registers vq, featnet, dit on `app`)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except UserError as exc:
        if os.environ.get("PIXBENCH_DEBUG") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    # `python -m pixbench.cli`: run the imported module's app, the one cli_gen registered on
    from pixbench.cli import main as _main

    _main()
