"""The generation track's images: its own cache (checked against the data spec), class-balanced
subsets of a split, and the two pixel conventions every gen task shares (uint8 NHWC in the
cache, float [-1, 1] NCHW in the tokenizer)."""

from __future__ import annotations

import numpy as np
import torch

from pixbench.config import Paths
from pixbench.data.cache import CachedDataset, load_cache
from pixbench.data.subsets import balanced_subset
from pixbench.errors import UserError


def gen_cache(paths: Paths, spec_profile: str, data_spec: dict) -> CachedDataset:
    """The generation track's own image cache; a cache of another data spec is an error."""
    where = paths.gen_cache_for(spec_profile)
    ds = load_cache(where)
    if ds.manifest.get("spec") != data_spec:
        raise UserError(f"{where}: cache was prepared for another data spec; re-run "
                        "`pixbench data prepare --gen`")
    return ds


def balanced_images(ds: CachedDataset, split: str, n: int | None) -> torch.Tensor:
    """A fixed class-balanced subset of a split as uint8 (M, C, H, W) (seed 0: every run and
    rank sees the same images)."""
    labels = np.asarray(getattr(ds, f"{split}_labels"))
    idx = balanced_subset(labels, n, len(ds.classes))
    images = np.asarray(getattr(ds, f"{split}_images"))
    return torch.from_numpy(np.ascontiguousarray(images[idx])).permute(0, 3, 1, 2)


def to_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1], the tokenizer's input range."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
