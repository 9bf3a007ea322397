"""Randomness as a pure function of (seed, step): a resumed run draws exactly what an
uninterrupted one would, with no RNG state to checkpoint, on any number of ranks."""

from __future__ import annotations

import torch


def step_seed(seed: int, global_step: int) -> int:
    return (seed * 1_000_003 + global_step * 7919 + 17) % (2**63 - 1)


def generator(seed: int, global_step: int) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, global_step))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch (negative steps keep it apart from per-step draws)."""
    return torch.randperm(n, generator=generator(seed, -1 - epoch))


def batch_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """A with-replacement batch for step-based tasks (VQ, DiT)."""
    return torch.randint(0, n, (batch,), generator=generator(seed, step))
