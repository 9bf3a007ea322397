"""`pixbench vq ...`, `pixbench featnet ...`, `pixbench dit ...`: the generation track."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pixbench.cli.options import (PARAMS_FILE, ParamsOpt, PatchOpt, ProfileOpt, SeedOpt,
                                  check_name_flags, load_params, noun, size_option, spec_command)
from pixbench.errors import UserError

vq_app = noun("vq", help="VQGAN tokenizer: train, encode latents, reconstruction metrics.")
featnet_app = noun("featnet", help="The small classifier whose features score samples (FID).")
dit_app = noun("dit", help="DiT on tokenizer latents: train, sample, evaluate (FID, IS, KID, "
                           "precision/recall).")

FidRefOpt = Annotated[Path | None, typer.Option(
    "--fid-ref", help="ADM reference batch (.npz: mu, sigma of Inception pool features) for "
    "fid_inception_ref; default $PIXBENCH_FID_REF. Needs Inception weights "
    "(python -m pixbench.eval.inception).")]
DitSizeOpt = size_option("DiT size key (xxs, xs, s, b, l, xl); default: gen_sweep.sizes[0].")


def _keys(*keys: str) -> tuple[str, ...]:
    return ("run_id", *keys, "wall_s", "job_id", "state", "logs")


@spec_command(vq_app, "train",
              keys=_keys("steps", "train_s", "final_l1", "code_restarts"))
def vq_train(params):
    """Train the profile's VQGAN (or import vq.pretrained); resumes from its checkpoint."""
    from pixbench.config import make_vq_spec

    return make_vq_spec(params)


@spec_command(vq_app, "encode",
              keys=_keys("latent_shape", "scale_factor", "train_codebook_usage"))
def vq_encode(params):
    """Encode the train and val images to cached latents (+ codes, labels, manifest)."""
    from pixbench.config import make_encode_spec

    return make_encode_spec(params)


@spec_command(vq_app, "eval",
              keys=_keys("psnr", "l1", "codebook_usage", "perplexity", "rfid_featnet"))
def vq_eval(params):
    """Reconstruction metrics: PSNR, L1, codebook usage and perplexity, rFID (FeatNet)."""
    from pixbench.config import make_vq_eval_spec

    return make_vq_eval_spec(params)


@spec_command(featnet_app, "train", keys=_keys("val_top1", "train_s"))
def featnet_train(params, seed: SeedOpt = 0):
    """Train the FID feature classifier on the generation track's images."""
    from pixbench.config import make_featnet_spec

    return make_featnet_spec(params, seed=seed)


@spec_command(dit_app, "train",
              keys=_keys("tokens", "steps", "train_loss", "gflops_per_step", "train_s"))
def dit_train(params, patch: PatchOpt, seed: SeedOpt = 0, size: DitSizeOpt = None):
    """Train one DiT cell on the tokenizer's latents; resumes from its checkpoint."""
    from pixbench.config import make_dit_spec

    return make_dit_spec(params, size=size, patch=patch, seed=seed)


@spec_command(dit_app, "eval",
              keys=_keys("fid_featnet", "isc_featnet_mean", "kid_featnet_mean",
                         "precision_featnet", "recall_featnet", "fid_inception",
                         "sample_img_per_s"))
def dit_eval(params, patch: PatchOpt, seed: SeedOpt = 0, size: DitSizeOpt = None,
             fid_ref: FidRefOpt = None):
    """Sample (params' sample section), decode, and score with FID/IS/KID/precision/recall."""
    import os

    from pixbench.config import make_dit_eval_spec
    from pixbench.eval.inception import read_fid_reference

    if fid_ref is not None:  # a machine path: handed to the run (and its workers) as the env var
        read_fid_reference(fid_ref)  # a bad file fails here, before any sampling
        os.environ["PIXBENCH_FID_REF"] = str(fid_ref.resolve())

    return make_dit_eval_spec(params, size=size, patch=patch, seed=seed)


@dit_app.command("sample")
def dit_sample(patch: PatchOpt, seed: SeedOpt = 0, size: DitSizeOpt = None,
               n: Annotated[int, typer.Option("-n", min=1, max=100_000,
                                             help="Samples (classes cycled).")] = 64,
               out: Annotated[Path, typer.Option("--out", help="PNG grid to write.")] = Path(
                   "samples.png"),
               params_path: ParamsOpt = PARAMS_FILE, profile: ProfileOpt = None) -> None:
    """Draw a sample grid from a trained DiT cell (EMA weights) with params' sampler."""
    check_name_flags({"size": size})
    if out.suffix.lower() != ".png" or out.is_dir():
        raise UserError(f"--out {out}: expected a .png file path")
    params = load_params(params_path, profile)  # a bad flag fails before the heavy imports
    from pixbench.config import Paths, make_dit_eval_spec
    from pixbench.tasks.gen.dit_eval import sample_grid

    make_dit_eval_spec(params, size=size, patch=patch, seed=seed)  # --size/--patch, first

    path = sample_grid(params, Paths(), size=size, patch=patch, seed=seed, n=n, out=out)
    typer.echo(f"wrote {path}")


instruments_app = noun("instruments", help="The generation track's fixed upstream models "
                       "(tokenizer, FeatNet), committed under instruments/<profile>/.")


@instruments_app.command("freeze")
def instruments_freeze(params_path: ParamsOpt = PARAMS_FILE, profile: ProfileOpt = None) -> None:
    """Copy the profile's trained tokenizer and FeatNet into instruments/<profile>/ (with
    PROVENANCE.json) and print the params.yaml lines that pin them by sha256."""
    params = load_params(params_path, profile)
    from pixbench.config import Paths
    from pixbench.tasks.gen.instruments import freeze, pins

    prov = freeze(params, Paths())
    typer.echo(f"froze instruments/{params.profile}: pin them in profiles.{params.profile}.gen "
               "of params.yaml:")
    typer.echo(pins(prov))
