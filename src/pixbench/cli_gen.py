"""`pixbench vq ...`, `pixbench featnet ...`, `pixbench dit ...`: the generation track's thin
commands (heavy imports inside them; hyper-parameters only from params.yaml)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pixbench.cli import (ClusterOpt, DeviceOpt, LauncherOpt, ParamsOpt, PatchOpt, ProfileOpt,
                          SeedOpt, StaleOpt, WaitOpt, _check_stale, _params, app)

vq_app = typer.Typer(help="VQGAN tokenizer: train, encode latents, reconstruction metrics.",
                     no_args_is_help=True)
featnet_app = typer.Typer(help="The small classifier whose features score samples (FID).",
                          no_args_is_help=True)
dit_app = typer.Typer(help="DiT on tokenizer latents: train, sample, evaluate (FID, IS, KID, "
                           "precision/recall).", no_args_is_help=True)
app.add_typer(vq_app, name="vq")
app.add_typer(featnet_app, name="featnet")
app.add_typer(dit_app, name="dit")

DitSizeOpt = Annotated[Optional[str], typer.Option(
    "--size", help="DiT size key (xxs, xs, s, b, l, xl); default: gen_sweep.sizes[0].")]


def _launch(task: str, spec, stale: str, device: str, launcher: str | None,
            cluster: str | None, wait: bool, keys: tuple[str, ...]) -> None:
    from pixbench.config import Paths
    from pixbench.launch import launch

    _check_stale(stale)
    metrics = launch(task, spec, Paths(), launcher=launcher, cluster=cluster, stale=stale,
                     device=device, wait=wait)
    keys = ("run_id", *keys, "wall_s", "job_id", "state", "logs")
    typer.echo(json.dumps({k: metrics[k] for k in keys if k in metrics}))


@vq_app.command("train")
def vq_train(stale: StaleOpt = "error", device: DeviceOpt = "auto", launcher: LauncherOpt = None,
             cluster: ClusterOpt = None, wait: WaitOpt = True,
             params_path: ParamsOpt = Path("params.yaml"), profile: ProfileOpt = None) -> None:
    """Train the profile's VQGAN (or import vq.pretrained); resumes from its checkpoint."""
    from pixbench.genconfig import make_vq_spec

    spec = make_vq_spec(_params(params_path, profile))
    _launch("vq", spec, stale, device, launcher, cluster, wait,
            ("steps", "train_s", "final_l1", "code_restarts"))


@vq_app.command("encode")
def vq_encode(stale: StaleOpt = "error", device: DeviceOpt = "auto", launcher: LauncherOpt = None,
              cluster: ClusterOpt = None, wait: WaitOpt = True,
              params_path: ParamsOpt = Path("params.yaml"), profile: ProfileOpt = None) -> None:
    """Encode the train and val images to cached latents (+ codes, labels, manifest)."""
    from pixbench.genconfig import make_encode_spec

    spec = make_encode_spec(_params(params_path, profile))
    _launch("vq-encode", spec, stale, device, launcher, cluster, wait,
            ("latent_shape", "scale_factor", "train_codebook_usage"))


@vq_app.command("eval")
def vq_eval(stale: StaleOpt = "error", device: DeviceOpt = "auto", launcher: LauncherOpt = None,
            cluster: ClusterOpt = None, wait: WaitOpt = True,
            params_path: ParamsOpt = Path("params.yaml"), profile: ProfileOpt = None) -> None:
    """Reconstruction metrics: PSNR, L1, codebook usage and perplexity, rFID (FeatNet)."""
    from pixbench.genconfig import make_vq_eval_spec

    spec = make_vq_eval_spec(_params(params_path, profile))
    _launch("vq-eval", spec, stale, device, launcher, cluster, wait,
            ("psnr", "l1", "codebook_usage", "perplexity", "rfid_featnet"))


@featnet_app.command("train")
def featnet_train(seed: SeedOpt = 0, stale: StaleOpt = "error", device: DeviceOpt = "auto",
                  launcher: LauncherOpt = None, cluster: ClusterOpt = None, wait: WaitOpt = True,
                  params_path: ParamsOpt = Path("params.yaml"), profile: ProfileOpt = None) -> None:
    """Train the FID feature classifier on the generation track's images."""
    from pixbench.genconfig import make_featnet_spec

    spec = make_featnet_spec(_params(params_path, profile), seed=seed)
    _launch("featnet", spec, stale, device, launcher, cluster, wait, ("val_top1", "train_s"))


@dit_app.command("train")
def dit_train(patch: PatchOpt, seed: SeedOpt = 0, size: DitSizeOpt = None,
              stale: StaleOpt = "error", device: DeviceOpt = "auto", launcher: LauncherOpt = None,
              cluster: ClusterOpt = None, wait: WaitOpt = True,
              params_path: ParamsOpt = Path("params.yaml"), profile: ProfileOpt = None) -> None:
    """Train one DiT cell on the tokenizer's latents; resumes from its checkpoint."""
    from pixbench.genconfig import make_dit_spec

    spec = make_dit_spec(_params(params_path, profile), size=size, patch=patch, seed=seed)
    _launch("dit", spec, stale, device, launcher, cluster, wait,
            ("tokens", "steps", "train_loss", "gflops_per_step", "train_s"))


@dit_app.command("eval")
def dit_eval(patch: PatchOpt, seed: SeedOpt = 0, size: DitSizeOpt = None,
             stale: StaleOpt = "error", device: DeviceOpt = "auto", launcher: LauncherOpt = None,
             cluster: ClusterOpt = None, wait: WaitOpt = True,
             params_path: ParamsOpt = Path("params.yaml"), profile: ProfileOpt = None) -> None:
    """Sample (params' sample section), decode, and score with FID/IS/KID/precision/recall."""
    from pixbench.genconfig import make_dit_eval_spec

    spec = make_dit_eval_spec(_params(params_path, profile), size=size, patch=patch, seed=seed)
    _launch("dit-eval", spec, stale, device, launcher, cluster, wait,
            ("fid_featnet", "isc_featnet_mean", "kid_featnet_mean", "precision_featnet",
             "recall_featnet", "fid_inception", "sample_img_per_s"))


@dit_app.command("sample")
def dit_sample(patch: PatchOpt, seed: SeedOpt = 0, size: DitSizeOpt = None,
               n: Annotated[int, typer.Option("-n", help="Samples (classes cycled).")] = 64,
               out: Annotated[Path, typer.Option("--out", help="PNG grid to write.")] = Path("samples.png"),
               params_path: ParamsOpt = Path("params.yaml"), profile: ProfileOpt = None) -> None:
    """Draw a sample grid from a trained DiT cell (EMA weights) with params' sampler."""
    from pixbench.config import Paths
    from pixbench.tasks.dit_eval import sample_grid

    params = _params(params_path, profile)
    path = sample_grid(params, Paths(), size=size, patch=patch, seed=seed, n=n, out=out)
    typer.echo(f"wrote {path}")
