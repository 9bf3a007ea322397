"""The generation track's data-parallel pieces, on top of `pixbench.distributed`.

Training splits every global batch across ranks (`distributed.shard`); what is not a gradient
(per-step losses, the VQ adaptive weight's gradients, dead-code usage) is reduced here so every
rank takes the same decisions. Inference work (encoding, sampling, decoding, scoring) is cut in
FIXED chunks whose contents and random seeds do not depend on the number of ranks: ranks take
contiguous runs of chunks and the rows are gathered back in chunk order, so 1 and N ranks give
the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from pixbench import distributed
from pixbench.errors import UserError

Chunk = Callable[[int, int, int], tuple[torch.Tensor, ...]]


def chunked(n: int, chunk: int, fn: Chunk,
            empty: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Run `fn(b, start, stop)` on this rank's share of the chunks [b*chunk, (b+1)*chunk) of n
    items and gather every rank's rows in chunk order, on every rank.

    `fn` returns a tuple of row tensors; `empty` holds one (0, ...) tensor per output for a rank
    with no chunk (all_gather needs the trailing shape on every rank)."""
    chunks = -(-n // chunk)
    parts = [fn(b, b * chunk, min(n, (b + 1) * chunk)) for b in distributed.shard_range(chunks)]
    local = [torch.cat(p) for p in zip(*parts)] if parts else list(empty)
    return tuple(distributed.gather_rows(t) for t in local)


def rank_mean(values: dict[str, float]) -> dict[str, float]:
    """Per-rank scalars (losses on each rank's shard) -> their mean over ranks, on every rank;
    unchanged on one process."""
    if distributed.world_size() == 1:
        return values
    t = torch.tensor([list(values.values())], dtype=torch.float64)  # (1, K)
    mean = distributed.gather_rows(t).mean(0)  # (K,)
    return {k: float(v) for k, v in zip(values, mean)}


def rank_mean_tensor(t: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over ranks (what DDP does to gradients), on every rank; `t` itself
    on one process."""
    if distributed.world_size() == 1:
        return t
    return distributed.gather_rows(t.detach()[None]).mean(0)  # (W, *t.shape) -> t.shape


def from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (a result only rank 0 computes, e.g. torch-fidelity scores,
    whose reference cache must have one writer)."""
    if distributed.world_size() == 1:
        return obj
    box = [obj if distributed.is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_divisible(batch: int, what: str) -> None:
    """A global batch must split evenly (every rank's loss is a mean over equal shards, so
    DDP's gradient mean is the global batch's)."""
    w = distributed.world_size()
    if batch % w:
        raise UserError(f"{what}={batch} is not divisible by the {w} ranks")
