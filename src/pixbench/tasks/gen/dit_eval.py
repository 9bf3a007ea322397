"""`pixbench dit eval|sample`: draw samples from a trained DiT (EMA weights), decode them with
the tokenizer, and score them through torch-fidelity.

Samples are generated first and passed as a dataset (torch-fidelity 0.4.0 crashes on
class-conditional generator inputs). Metrics on the FeatNet features carry `_featnet`, the
standard Inception-v3 ones `_inception` (only where its weights are on this machine).
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pixbench.config import Paths
from pixbench.errors import UserError
from pixbench.genconfig import DitEvalSpec, FidConfig, SampleConfig
from pixbench.runio import (atomic_write_bytes, atomic_write_json, describe_run, load_checkpoint,
                            read_json)
from pixbench.tasks.classify import open_run_dir, step_seed

SAMPLES_FILE = "samples.npz"


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
                     sample: SampleConfig, fid: FidConfig) -> SamplingContext:
    from pixbench.tasks.featnet import featnet_path, reference_cache_name, reference_images
    from pixbench.tasks.latents import latents_dir, tokenizer_dir
    from pixbench.tasks.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir(paths, profile, tokenizer), expect_digest=tokenizer["digest"])
    man = read_json(latents_dir(paths, profile, tokenizer["run_id"]) / "manifest.json",
                    "latents manifest")
    vq_spec = read_json(paths.run_dir(profile, tokenizer["run_id"]) / "spec.json",
                        "tokenizer spec")["spec"]
    ref = reference_images(paths, profile, fid, vq_spec["data"])
    weights = featnet_path(paths, profile, featnet)
    name = reference_cache_name(profile, fid, featnet)
    return SamplingContext(tok, float(man["scale_factor"]), tuple(man["latent_shape"]),
                           int(man["num_classes"]), sample, fid, weights, ref, name,
                           paths.cache_dir / "fidelity")


def class_labels(n: int, num_classes: int) -> torch.Tensor:
    """Balanced labels 0, 1, ..., K-1, 0, 1, ... (the reference is class-balanced too)."""
    return torch.arange(n) % num_classes


@torch.no_grad()
def draw_samples(model: nn.Module, ctx: SamplingContext, *, n: int, seed: int,
                 device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n decoded samples (uint8 (n, C, H, W)) and their labels; batch b draws its noise from
    (seed, b), so the result depends on the seed and batch size only."""
    from pixbench.gen.diffusion import sample
    from pixbench.tasks.tokenizer import decode_latents

    s = ctx.sample
    device = device or next(model.parameters()).device
    labels = class_labels(n, ctx.num_classes)
    out = []
    for b, i in enumerate(range(0, n, s.batch_size)):
        gen = torch.Generator().manual_seed(step_seed(seed, 10_000_000 + b))
        z = sample(model, labels[i:i + s.batch_size].to(device), shape=ctx.latent_shape,
                   steps=s.steps, cfg_scale=s.cfg_scale, generator=gen, sampler=s.sampler,
                   eta=s.eta)
        out.append(decode_latents(ctx.tokenizer, z.cpu() / ctx.scale_factor))
    return torch.cat(out), labels


def score_samples(images: torch.Tensor, ctx: SamplingContext, *, full: bool) -> dict:
    """FID (and with `full`: IS, KID, precision/recall, and Inception metrics where possible)."""
    from pixbench.eval.fidelity import fidelity_metrics, inception_weights

    f = ctx.fid
    kid_subset = min(f.kid_subset_size, images.shape[0])
    out = fidelity_metrics(images, ctx.reference, extractor="featnet",
                           weights_path=ctx.featnet_weights, ref_cache_name=ctx.ref_cache_name,
                           cache_root=ctx.cache_root, kid_subset_size=kid_subset,
                           prc_neighborhood=f.prc_neighborhood, isc=full, kid=full, prc=full)
    inc = inception_weights() if full and f.inception else None
    if inc is not None:
        out.update(fidelity_metrics(images, ctx.reference, extractor="inception",
                                    weights_path=inc, ref_cache_name=ctx.ref_cache_name + "-inc",
                                    cache_root=ctx.cache_root, kid_subset_size=kid_subset,
                                    prc_neighborhood=f.prc_neighborhood))
    return out


def load_ema(paths: Paths, profile: str, dit: dict) -> nn.Module:
    from pixbench.genconfig import DitSpec
    from pixbench.tasks.dit import EMA_FILE, build_model

    run_dir = paths.run_dir(profile, dit["run_id"])
    ckpt = load_checkpoint(run_dir / EMA_FILE) if (run_dir / EMA_FILE).exists() else None
    if ckpt is None:
        raise UserError(f"{run_dir / EMA_FILE} not found (run `pixbench dit train`)")
    if not isinstance(ckpt, dict) or ckpt.get("spec_digest") != dit["digest"]:
        raise UserError(f"{run_dir / EMA_FILE}: weights of another DiT spec; re-run `pixbench dit train`")
    spec = DitSpec.model_validate(ckpt["spec"])
    model = build_model(spec, ckpt["latent_shape"], ckpt["num_classes"])
    model.load_state_dict(ckpt["ema"])
    return model.eval()


def run_eval(spec: DitEvalSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
             progress: bool = True) -> dict:
    from pixbench.tasks.classify import pick_device

    run_dir = paths.run_dir(spec.profile, spec.run_id)
    done = open_run_dir(run_dir, spec, stale)
    if done is not None:
        return done
    dev = pick_device(device)
    model = load_ema(paths, spec.profile, spec.dit).to(dev)
    ctx = sampling_context(paths, spec.profile, tokenizer=spec.tokenizer, featnet=spec.featnet,
                           sample=spec.sample, fid=spec.fid)
    describe_run(run_dir, spec, spec.seed, str(dev))
    t0 = time.perf_counter()
    images, labels = draw_samples(model, ctx, n=spec.sample.num_samples, seed=spec.seed, device=dev)
    sample_s = time.perf_counter() - t0
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images.numpy(), labels=labels.numpy())
    atomic_write_bytes(run_dir / SAMPLES_FILE, buf.getvalue())
    t0 = time.perf_counter()
    scores = score_samples(images, ctx, full=True)
    train = read_json(paths.run_dir(spec.profile, spec.dit["run_id"]) / "metrics.json", "DiT metrics")
    metrics = {"run_id": spec.run_id, "task": "dit-eval", "dit": spec.dit["run_id"],
               **{k: train[k] for k in ("size", "patch", "seed", "display", "tokens", "params",
                                        "gflops_per_step", "train_s", "steps", "pos_embed")},
               "profile": spec.profile, "num_samples": spec.sample.num_samples,
               "sampler": spec.sample.sampler, "sample_steps": spec.sample.steps,
               "cfg_scale": spec.sample.cfg_scale, **scores,
               "sample_img_per_s": spec.sample.num_samples / sample_s,
               "score_s": time.perf_counter() - t0, "device": dev.type,
               "spec_digest": spec.digest()}
    if progress:
        print(f"{spec.run_id}: FID(featnet) {metrics['fid_featnet']:.2f}", flush=True)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


def sample_grid(params, paths: Paths, *, size: str | None, patch: int, seed: int, n: int,
                out: Path) -> Path:
    """A PNG grid of n samples (row = class) from the cell's EMA weights."""
    from pixbench.genconfig import make_dit_eval_spec
    from pixbench.report.images import save_grid

    spec = make_dit_eval_spec(params, size=size, patch=patch, seed=seed)
    model = load_ema(paths, spec.profile, spec.dit)
    ctx = sampling_context(paths, spec.profile, tokenizer=spec.tokenizer, featnet=spec.featnet,
                           sample=spec.sample, fid=spec.fid)
    images, _ = draw_samples(model, ctx, n=n, seed=seed)
    save_grid(images, out, ncol=ctx.num_classes)
    return out
