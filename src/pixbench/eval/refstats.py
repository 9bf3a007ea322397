"""FID statistics computed streaming, and the reference statistics cache.

FID needs only the mean and covariance of the reference features, never the reference images
at once: features are extracted batch by batch (the same torch-fidelity extractors as
eval/fidelity.py) and folded into running float64 sums (sum f, sum f f^T), so memory is one
batch plus D x D whatever the reference size (fast-DiT / ADM precompute them the same way).
Reference statistics are cached once per (reference data, extractor weights) in an .npz whose
`key` holds both digests; another key recomputes them, never reuses.

The Fréchet distance itself is torch-fidelity's `fid_statistics_to_metric` (one formula).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from pixbench.errors import UserError
from pixbench.eval.fidelity import (FEATNET_NAME, INCEPTION_NAME, Extractor, weights_digest,
                                    register_featnet_extractor, register_inception_extractor)
from pixbench.runio import atomic_write_bytes, load_arrays

LAYER = {"featnet": "feat", "inception": "2048"}  # the FID feature of each extractor
BATCH = {"featnet": 500, "inception": 32}  # as fidelity_metrics' torch-fidelity batches


class RunningStats:
    """Mean and unbiased covariance of rows added batch by batch, in float64."""

    def __init__(self) -> None:
        self.n, self.s1, self.s2 = 0, None, None

    def add(self, f: np.ndarray | torch.Tensor) -> None:
        f = np.asarray(f, dtype=np.float64)  # (b, D)
        if self.s1 is None:
            self.s1, self.s2 = np.zeros(f.shape[1]), np.zeros((f.shape[1], f.shape[1]))
        self.n += f.shape[0]
        self.s1 += f.sum(axis=0)
        self.s2 += f.T @ f  # (D, D)

    def merge(self, n: int, s1: np.ndarray, s2: np.ndarray) -> None:
        """Add another shard's sums (a rank's samples): the statistics of both shards' rows,
        equal to adding the rows here up to float summation order."""
        if n == 0:
            return
        if self.s1 is None:
            self.n, self.s1, self.s2 = n, np.array(s1, np.float64), np.array(s2, np.float64)
            return
        self.n += n
        self.s1 += s1
        self.s2 += s2

    def result(self) -> dict[str, np.ndarray | int]:
        if self.n < 2:
            raise UserError(f"FID statistics need at least 2 images, got {self.n}")
        mu = self.s1 / self.n
        sigma = (self.s2 - self.n * np.outer(mu, mu)) / (self.n - 1)
        return {"mu": mu, "sigma": (sigma + sigma.T) / 2, "n": self.n}


def feature_extractor(extractor: Extractor, weights_path: Path, device: torch.device):
    """The registered torch-fidelity extractor (eval mode, on `device`) giving FID features."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if extractor == "featnet":
        register_featnet_extractor()
    else:
        register_inception_extractor()
    name = FEATNET_NAME if extractor == "featnet" else INCEPTION_NAME
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    fe = cls(name, [LAYER[extractor]], feature_extractor_weights_path=str(weights_path))
    return fe.to(device).eval()


@torch.no_grad()
def stream_sums(batches: Iterable[torch.Tensor], extractor: Extractor, weights_path: Path,
                device: torch.device | None = None) -> RunningStats:
    """The running float64 sums (n, sum f, sum f f^T) of the FID features of uint8
    (b, 1|3, H, W) batches: what a rank holding some of the samples contributes."""
    device = device or torch.device("cpu")
    fe = feature_extractor(extractor, Path(weights_path), device)
    acc = RunningStats()
    for x in batches:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # torch-fidelity: 3 channels
        (f,) = fe(x.contiguous().to(device))  # (b, D)
        acc.add(f.double().cpu())
    return acc


def stream_stats(batches: Iterable[torch.Tensor], extractor: Extractor, weights_path: Path,
                 device: torch.device | None = None) -> dict:
    """{mu (D,), sigma (D, D), n} of the FID features of uint8 (b, 1|3, H, W) batches."""
    return stream_sums(batches, extractor, weights_path, device).result()


def tensor_batches(images: torch.Tensor, extractor: Extractor) -> Iterable[torch.Tensor]:
    """uint8 (N, C, H, W) in the extractor's batch size."""
    b = BATCH[extractor]
    return (images[i:i + b] for i in range(0, len(images), b))


def fid_from_stats(a: dict, b: dict) -> float:
    """The Fréchet distance of two {mu, sigma} (torch-fidelity's formula, float64)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    sa = {k: np.asarray(a[k], np.float64) for k in ("mu", "sigma")}
    sb = {k: np.asarray(b[k], np.float64) for k in ("mu", "sigma")}
    if sa["mu"].shape != sb["mu"].shape:
        raise UserError(f"FID statistics of different feature sizes: {sa['mu'].shape} vs "
                        f"{sb['mu'].shape}")
    return float(fid_statistics_to_metric(sa, sb, verbose=False)[KEY_METRIC_FID])


def cached_stats(path: Path, key: dict, compute: Callable[[], dict]) -> dict:
    """The statistics cached at `path` when its key equals `key`, else compute() written there
    atomically (callers run this on one rank: one writer)."""
    key_json = json.dumps(key, sort_keys=True)
    if path.is_file():
        try:  # load_arrays: never unpickles; a file holding objects is refused like a corrupt one
            z = load_arrays(path, "reference statistics")
            if str(z["key"]) == key_json:
                return {"mu": z["mu"], "sigma": z["sigma"], "n": int(z["n"])}
        except (UserError, KeyError, TypeError, ValueError):
            pass  # unreadable or another format: recomputed below
    stats = compute()
    buf = io.BytesIO()
    np.savez(buf, mu=stats["mu"], sigma=stats["sigma"], n=np.int64(stats["n"]),
             key=np.array(key_json))
    atomic_write_bytes(path, buf.getvalue())
    return stats


def stats_file(root: Path, name: str, key: dict) -> Path:
    """`root/<name>-<digest of key>.npz`: a readable name, unique per key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / f"{name}-{digest}.npz"


def extractor_key(extractor: Extractor, weights_path: Path) -> dict:
    return {"extractor": extractor, "weights": weights_digest(Path(weights_path), extractor)}
