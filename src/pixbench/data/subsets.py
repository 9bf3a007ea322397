"""Fixed, class-balanced subsets: every cell of a sweep sees the same images."""

from __future__ import annotations

import math

import numpy as np


def balanced_subset(labels: np.ndarray, n: int | None, num_classes: int) -> np.ndarray:
    """A fixed class-balanced subset (seed 0 for every run: all cells see the same images).

    ImageFolder splits are sorted by class, so a prefix would hold a few classes only."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    per_class = math.ceil(n / num_classes)
    picked = np.concatenate([order[labels[order] == c][:per_class] for c in range(num_classes)])
    return np.sort(rng.permutation(picked)[:n])
