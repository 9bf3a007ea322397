"""Sampling and scoring a DiT, shared by training (the FID-vs-step probe) and `dit eval|sample`.

Samples come in fixed chunks of `sample.batch_size`: chunk b holds samples [b*B, (b+1)*B),
labels cycling through the classes, and draws its noise from (seed, b) alone. Ranks take
contiguous runs of chunks and the decoded images are gathered in chunk order, so 1 and N ranks
give the same samples. Scoring goes through torch-fidelity on rank 0 (it writes the reference
statistics cache; one writer) and every rank gets the scores.

Samples are generated first and passed as a dataset (torch-fidelity 0.4.0 crashes on
class-conditional generator inputs). Metrics on the FeatNet features carry `_featnet`, the
standard Inception-v3 ones `_inception` (only where its weights are on this machine).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from pixbench import distributed
from pixbench.config import Paths
from pixbench.errors import UserError
from pixbench.eval.fidelity import fidelity_metrics, inception_weights
from pixbench.gen.diffusion import sample
from pixbench.config import DitSpec, FidConfig, SampleConfig
from pixbench.runio import load_checkpoint, read_json
from pixbench.tasks.gen.featnet import featnet_path, reference_cache_name, reference_images
from pixbench.tasks.gen.latents import read_manifest, tokenizer_dir
from pixbench.tasks.gen.parallel import chunked, from_main
from pixbench.tasks.gen.tokenizer import decode_latents, latent_geometry, load_tokenizer
from pixbench.tasks.seeds import generator

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
    reference: torch.Tensor  # (M, C, H, W) uint8
    ref_cache_name: str
    cache_root: Path


def sampling_context(paths: Paths, profile: str, *, tokenizer: dict, featnet: dict,
                     sample: SampleConfig, fid: FidConfig,
                     device: torch.device | None = None) -> SamplingContext:
    """Everything sampling and scoring need besides the model; the tokenizer decodes on
    `device` (default: the CPU)."""
    tok = load_tokenizer(tokenizer_dir(paths, profile, tokenizer), expect_digest=tokenizer["digest"])
    man = read_manifest(paths, profile, tokenizer)
    vq_spec = read_json(paths.run_dir(profile, tokenizer["run_id"]) / "spec.json",
                        "tokenizer spec")["spec"]
    ref = reference_images(paths, profile, fid, vq_spec["data"])
    weights = featnet_path(paths, profile, featnet)
    name = reference_cache_name(profile, fid, featnet)
    return SamplingContext(tok.to(device or "cpu"), float(man["scale_factor"]),
                           tuple(man["latent_shape"]), int(man["num_classes"]), sample, fid,
                           weights, ref, name, paths.cache_dir / "fidelity")


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
    """FID (and with `full`: IS, KID, precision/recall, and Inception metrics where possible),
    computed on rank 0, returned on every rank."""
    out = {}
    if distributed.is_main():
        f = ctx.fid
        kw = dict(kid_subset_size=min(f.kid_subset_size, images.shape[0]),
                  prc_neighborhood=f.prc_neighborhood, cache_root=ctx.cache_root)
        out = fidelity_metrics(images, ctx.reference, extractor="featnet",
                               weights_path=ctx.featnet_weights, ref_cache_name=ctx.ref_cache_name,
                               isc=full, kid=full, prc=full, **kw)
        inc = inception_weights() if full and f.inception else None
        if inc is not None:
            out.update(fidelity_metrics(images, ctx.reference, extractor="inception",
                                        weights_path=inc, ref_cache_name=ctx.ref_cache_name + "-inc",
                                        **kw))
    return from_main(out)


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
