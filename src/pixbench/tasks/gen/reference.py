"""The real images generated samples are scored against, without loading a split whole.

- FID: statistics of the class-balanced reference subset (fid.reference, fid.reference_images;
  null = the whole split), computed streaming from the memory-mapped cache in index-sorted
  batches and cached under <cache_dir>/fidelity per (cache manifest, split, subset, extractor
  weights) (eval/refstats.py).
- KID and precision/recall compare features set to set, so they need the reference set's
  features: the same balanced subset when fid.reference_images bounds it, else a balanced
  subset as large as the samples (ADM's evaluator also uses a bounded reference batch for
  them); its images are read from the memory-mapped cache a batch at a time, and only when
  its features are not cached yet (eval/tfmetrics.py).
- The ADM reference batch (.npz, Inception statistics of e.g. ImageNet 256) given by the user:
  $PIXBENCH_FID_REF or `pixbench dit eval --fid-ref`, a machine path (eval/inception.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pixbench.config import FidConfig, Paths
from pixbench.data.cache import CachedDataset
from pixbench.data.subsets import balanced_subset
from pixbench.eval.fidelity import Extractor
from pixbench.eval.refstats import (BATCH, cached_stats, extractor_key, stats_file,
                                    stream_stats)
from pixbench.tasks.gen.data import gen_cache

FID_REF_ENV = "PIXBENCH_FID_REF"


def reference_index(ds: CachedDataset, fid: FidConfig) -> np.ndarray:
    labels = np.asarray(getattr(ds, f"{fid.reference}_labels"))
    return balanced_subset(labels, fid.reference_images, len(ds.classes))  # sorted


def split_batches(images: np.ndarray, idx: np.ndarray, batch: int) -> Iterator[torch.Tensor]:
    """uint8 (b, C, H, W) batches of the rows `idx` (sorted) of a (memory-mapped) uint8
    (N, H, W, C) split: one batch in memory at a time, read in file order."""
    for i in range(0, len(idx), batch):
        rows = np.asarray(images[idx[i:i + batch]])  # (b, H, W, C), fancy indexing copies b rows
        yield torch.from_numpy(rows).permute(0, 3, 1, 2)


def reference_stats(paths: Paths, profile: str, fid: FidConfig, data_spec: dict,
                    extractor: Extractor, weights: Path,
                    device: torch.device | None = None) -> dict:
    """{mu, sigma, n} of the reference subset's FID features, computed once and cached."""
    ds = gen_cache(paths, profile, data_spec)
    idx = reference_index(ds, fid)
    key = {"data": ds.manifest["manifest_sha256"], "split": fid.reference, "n": int(len(idx)),
           "subset": fid.reference_images, **extractor_key(extractor, weights)}
    path = stats_file(paths.cache_dir / "fidelity", f"{profile}-{fid.reference}-{extractor}", key)
    images = getattr(ds, f"{fid.reference}_images")
    return cached_stats(path, key, lambda: stream_stats(
        split_batches(images, idx, BATCH[extractor]), extractor, weights, device))


class SplitImages:
    """uint8 (M, C, H, W) rows `idx` of a memory-mapped uint8 (N, H, W, C) split, each read when
    indexed: what torch-fidelity's extraction asks of a reference tensor (len, shape, dtype,
    dim, cpu, [i]), without the M images in memory (at ImageNet scale, as many as samples:
    50k at 256 px are 9.8 GB). Row i equals balanced_images' row i."""

    dtype = torch.uint8

    def __init__(self, images: np.ndarray, idx: np.ndarray) -> None:
        self.images, self.idx = images, idx
        h, w, c = images.shape[1:]
        self.shape = torch.Size((len(idx), c, h, w))

    def __len__(self) -> int:
        return len(self.idx)

    def dim(self) -> int:
        return 4

    def cpu(self) -> SplitImages:
        return self

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[self.idx[i]])).permute(2, 0, 1)  # (C, H, W)


def set_reference(paths: Paths, profile: str, fid: FidConfig, data_spec: dict,
                  num_samples: int) -> SplitImages:
    """The uint8 (M, C, H, W) reference images for KID / precision-recall (bounded, see
    above), read from the cache only where their features are not cached yet, a batch at a
    time."""
    ds = gen_cache(paths, profile, data_spec)
    labels = np.asarray(getattr(ds, f"{fid.reference}_labels"))
    idx = balanced_subset(labels, fid.reference_images or num_samples, len(ds.classes))
    return SplitImages(getattr(ds, f"{fid.reference}_images"), idx)
