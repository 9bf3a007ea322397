"""`pixbench dit eval|sample`: draw samples from a trained DiT (EMA weights), decode them with
the tokenizer, and score them through torch-fidelity (tasks/gen/sampling.py).

`dit eval` runs on the task runner: ranks sample their chunks and keep them, every rank scores
its own samples and rank 0 reduces their features (sampling.score_samples); every rank returns
the metrics. No rank holds every sample, rank 0 included: samples.npz is written while the
ranks hand rank 0 their samples chunk by chunk (write_samples). np.savez_compressed would need
every image in one array (50k ImageNet samples: 9.8 GB, plus the compressed copy it builds in
memory); instead the npz's `images.npy` member is streamed, deflated on the fly: the .npy
header for the whole set, then each piece as it arrives (one in memory at a time), then
`labels.npy`. The members hold the bytes np.savez_compressed writes for the same arrays (same
header, same C-order data, same deflate level), so readers see the same arrays; the file is
written beside its destination and renamed, never half there.
"""

from __future__ import annotations

import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from pixbench import distributed
from pixbench.config import Paths
from pixbench.eval.images import save_grid
from pixbench.config import DitEvalSpec, make_dit_eval_spec
from pixbench.runio import atomic_write_with, read_json
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
    sample_s = time.perf_counter() - t0  # (n_rank, C, H, W): this rank's samples only
    write_samples(r.dir / SAMPLES_FILE, images, labels, spec.sample.batch_size,
                  root=r.paths.runs_dir)
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


def write_samples(path: Path, images: torch.Tensor, labels: torch.Tensor, piece: int, *,
                  root: Path) -> None:
    """Every rank: hand this rank's uint8 samples (n_rank, C, H, W) (draw_samples' rows) to
    rank 0 in pieces of `piece` rows; rank 0 writes all of them in sample order with every
    sample's labels (n,) to `path` (below `root`) as an .npz of `images` and `labels`."""
    pieces = [images[i:i + piece] for i in range(0, len(images), piece)]
    if not distributed.is_main():
        distributed.to_main(pieces, _never)
        return
    atomic_write_with(path, lambda f: _write_npz(
        f, images.shape[1:], labels, lambda take: distributed.to_main(pieces, take)), root=root)


def _never(i: int, piece: torch.Tensor) -> None:
    raise AssertionError("only rank 0 receives samples")


def _write_npz(f, row_shape: torch.Size, labels: torch.Tensor, feed) -> None:
    """The npz np.savez_compressed(f, images=..., labels=...) writes, its images streamed:
    `feed(take)` calls take(i, rows) with every (b, *row_shape) uint8 piece in sample order."""
    n = len(labels)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (n, *(int(d) for d in row_shape))}
    written = 0
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        with zf.open("images.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)  # (n, C, H, W) uint8

            def take(i: int, rows: torch.Tensor) -> None:
                nonlocal written
                member.write(np.ascontiguousarray(rows.numpy()).tobytes())
                written += len(rows)

            feed(take)
        if written != n:
            raise AssertionError(f"samples.npz: {written} samples arrived for {n} labels")
        with zf.open("labels.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, labels.numpy())
