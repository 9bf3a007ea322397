"""The generation track's data-parallel pieces, on top of `pixbench.distributed`.

Training splits every global batch across ranks (`distributed.shard`); what is not a gradient
(per-step losses, the VQ adaptive weight's gradients, dead-code usage) is reduced here so every
rank takes the same decisions. Inference work (encoding, sampling, decoding, scoring) is cut in
FIXED chunks whose contents and random seeds do not depend on the number of ranks: ranks take
contiguous runs of chunks, so 1 and N ranks give the same rows. Small rows (counts, codes) are
gathered back in chunk order on every rank; images are not: a rank keeps its own
(chunked_local) and hands rank 0 what it scores with (features_to_main) or writes
(distributed.to_main), one piece at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from pixbench import distributed
from pixbench.errors import UserError

Chunk = Callable[[int, int, int], tuple[torch.Tensor, ...]]


def chunked_local(n: int, chunk: int, fn: Chunk,
                  empty: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Run `fn(b, start, stop)` on this rank's share of the chunks [b*chunk, (b+1)*chunk) of n
    items and return this rank's rows only: a contiguous run of rows, the ranks' runs in rank
    order (distributed.shard_range), so per-rank results gathered in rank order are in chunk
    order.

    `fn` returns a tuple of row tensors; `empty` holds one (0, ...) tensor per output for a rank
    with no chunk."""
    mine = distributed.shard_range(-(-n // chunk))
    first, rows = mine.start * chunk, min(n, mine.stop * chunk) - min(n, mine.start * chunk)
    out: list[torch.Tensor] = []
    parts: list[tuple[torch.Tensor, ...]] = []
    for b in mine:
        start, stop = b * chunk, min(n, (b + 1) * chunk)
        part = fn(b, start, stop)
        if not out and not parts and all(len(t) == stop - start for t in part):
            out = [torch.empty((rows, *t.shape[1:]), dtype=t.dtype, device=t.device)
                   for t in part]
        if out:  # a row per item (images): copied into place, never the rows twice in memory
            for o, t in zip(out, part):
                o[start - first:stop - first] = t
        else:  # other rows (a count per chunk): concatenated
            parts.append(part)
    if parts:
        return tuple(torch.cat(p) for p in zip(*parts))
    return tuple(out) if out else tuple(empty)


def chunked(n: int, chunk: int, fn: Chunk, empty: tuple[torch.Tensor, ...], *,
            main_only: bool = False) -> tuple[torch.Tensor, ...]:
    """`chunked_local`, then every rank's rows in chunk order on every rank (all_gather: for
    small rows, e.g. counts); with `main_only`, on rank 0 only (the others keep their own
    rows), for rows only rank 0 scores."""
    local = chunked_local(n, chunk, fn, empty)
    if not main_only:
        return tuple(distributed.gather_rows(t) for t in local)
    return tuple(cat_to_main(t) for t in local)


def cat_to_main(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `t` concatenated in rank order, on rank 0; `t` itself elsewhere."""
    if distributed.world_size() == 1:
        return t
    rows: list[torch.Tensor] = []
    distributed.to_main([t], lambda i, piece: rows.append(piece))
    return torch.cat(rows) if distributed.is_main() else t


def features_to_main(local: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """Per-rank features {layer: (n_rank, D)} -> every rank's rows in rank order on rank 0
    (None elsewhere); `local` is None on a rank without samples. Features travel, never the
    images. Rank 0 names the layers: it holds the first chunks, so it has rows whenever any
    rank has."""
    if distributed.world_size() == 1:
        return local
    keys = sorted(local or {})
    got: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    distributed.to_main([local[k] for k in keys], lambda i, piece: got[keys[i]].append(piece))
    if not distributed.is_main() or local is None:
        return None
    return {k: torch.cat(v) for k, v in got.items()}


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
