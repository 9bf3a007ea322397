"""Per-channel pixel statistics of a cache's training split, for input normalisation: exact
integer histograms, so chunks, shards and resumed prepares all give the same numbers."""

from __future__ import annotations

import numpy as np


def channel_hist(images: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(C, 256) int64 per-channel histogram of uint8 (N, H, W, C) images: exact, and parts add
    up to the whole in any order (chunks, shards, resumed runs: the same statistics)."""
    c = images.shape[3]
    hist = np.zeros((c, 256), dtype=np.int64)
    for i in range(0, images.shape[0], chunk):
        x = np.asarray(images[i:i + chunk]).reshape(-1, c)  # (n * H * W, C)
        for k in range(c):
            hist[k] += np.bincount(x[:, k], minlength=256)
    return hist


def stats_from_hist(hist: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of pixel/255: exact integer sums, one rounding."""
    v = np.arange(256, dtype=object)
    mean, std = [], []
    for h in np.asarray(hist, dtype=np.int64):
        h = h.astype(object)
        n, s, q = int(h.sum()), int((h * v).sum()), int((h * v * v).sum())
        mean.append(s / (255 * n))
        std.append(float(np.sqrt((n * q - s * s) / (255 * 255 * n * n))))
    return mean, std
