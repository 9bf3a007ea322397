"""`pixbench dit eval|sample`: draw samples from a trained DiT (EMA weights), decode them with
the tokenizer, and score them through torch-fidelity (tasks/gen/sampling.py).

`dit eval` runs on the task runner: ranks sample their chunks, rank 0 writes samples.npz and
scores, every rank returns the metrics.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np

from pixbench.config import Paths
from pixbench.eval.images import save_grid
from pixbench.config import DitEvalSpec, make_dit_eval_spec
from pixbench.runio import read_json
from pixbench.tasks.gen.sampling import draw_samples, load_ema, sampling_context, score_samples
from pixbench.tasks.runner import Run
from pixbench.tasks.trainer import Once, run_task

SAMPLES_FILE = "samples.npz"
TRAIN_KEYS = ("size", "patch", "seed", "display", "tokens", "params", "gflops_per_step",
              "train_s", "steps", "pos_embed")  # carried over from the DiT's metrics


def run_eval(spec: DitEvalSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
             progress: bool = True) -> dict:
    """Sample the cell's EMA DiT with the profile's sampler and score the samples."""

    def build(r: Run) -> Once:
        model = load_ema(paths, spec.profile, spec.dit).to(r.device)
        ctx = sampling_context(paths, spec.profile, tokenizer=spec.tokenizer, featnet=spec.featnet,
                               sample=spec.sample, fid=spec.fid, device=r.device)
        train = read_json(paths.run_dir(spec.profile, spec.dit["run_id"]) / "metrics.json",
                          "DiT metrics")
        return Once(lambda r, state: _evaluate(r, model, ctx, train, progress))

    return run_task(spec, paths, build, stale=stale, device=device, progress=progress)


def _evaluate(r: Run, model, ctx, train: dict, progress: bool) -> dict:
    """samples.npz (rank 0) and the metrics."""
    spec = r.spec
    t0 = time.perf_counter()
    images, labels = draw_samples(model, ctx, n=spec.sample.num_samples, seed=spec.seed)
    sample_s = time.perf_counter() - t0
    if r.is_main:
        buf = io.BytesIO()
        np.savez_compressed(buf, images=images.numpy(), labels=labels.numpy())
        r.write_bytes(SAMPLES_FILE, buf.getvalue())
    t0 = time.perf_counter()
    scores = score_samples(images, ctx, full=True)
    metrics = {"run_id": spec.run_id, "task": spec.task, "dit": spec.dit["run_id"],
               **{k: train[k] for k in TRAIN_KEYS},
               "profile": spec.profile, "num_samples": spec.sample.num_samples,
               "sampler": spec.sample.sampler, "sample_steps": spec.sample.steps,
               "cfg_scale": spec.sample.cfg_scale, **scores,
               "sample_img_per_s": spec.sample.num_samples / sample_s,
               "score_s": time.perf_counter() - t0, "device": r.device.type,
               "spec_digest": spec.digest()}
    if progress and r.is_main:
        print(f"{spec.run_id}: FID(featnet) {metrics['fid_featnet']:.2f}", file=sys.stderr,
              flush=True)
    return metrics


def sample_grid(params, paths: Paths, *, size: str | None, patch: int, seed: int, n: int,
                out: Path) -> Path:
    """A PNG grid of n samples (row = class) from the cell's EMA weights (one process)."""
    spec = make_dit_eval_spec(params, size=size, patch=patch, seed=seed)
    model = load_ema(paths, spec.profile, spec.dit)
    ctx = sampling_context(paths, spec.profile, tokenizer=spec.tokenizer, featnet=spec.featnet,
                           sample=spec.sample, fid=spec.fid)
    images, _ = draw_samples(model, ctx, n=n, seed=seed)
    return save_grid(images, out, ncol=ctx.num_classes)
