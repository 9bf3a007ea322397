"""Data-parallel helpers: rank-aware everything, and a no-op on one process.

Inside a SLURM job with several tasks, `distributed_from_slurm` reads submitit's environment
(MASTER_ADDR/PORT, RANK, WORLD_SIZE) and starts torch.distributed (NCCL on GPUs, gloo on CPU).
Training then splits every global batch across ranks, so the math and the recipe (global
batch, lr) do not depend on the number of GPUs; only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shard_rows(n: int) -> slice:
    """This rank's contiguous rows of a global batch of n (ranks in order tile it exactly)."""
    w, r = world_size(), rank()
    if n % w:
        raise ValueError(f"global batch {n} is not divisible by world size {w}")
    return slice(r * (n // w), (r + 1) * (n // w))


def shard(batch_idx: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (all ranks draw the same global batch)."""
    return batch_idx[shard_rows(batch_idx.shape[0])]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def local_device(requested: str) -> str:
    """Under DDP on GPUs each rank takes its local GPU."""
    if world_size() > 1 and requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return requested


@contextmanager
def distributed_from_slurm() -> Iterator[None]:
    """Initialise torch.distributed when this SLURM job has more than one task."""
    ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if ntasks <= 1 or dist.is_initialized():
        yield
        return
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment().export()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard_range(n: int) -> range:
    """This rank's contiguous slice of n items (sampling, encoding, scoring): concatenating the
    ranks' slices in rank order gives 0..n-1, so gathered results keep one order."""
    per = -(-n // world_size())
    return range(min(n, rank() * per), min(n, (rank() + 1) * per))


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (dim 0) in rank order, on every rank.

    Shards may differ in length by one (shard_range); all_gather needs equal shapes, so each
    rank pads to the longest shard and the padding is cut off after the gather."""
    if world_size() == 1:
        return t
    dev = _comm_device()
    sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], device=dev))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[:t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(out, padded)
    return torch.cat([o[:int(s.item())] for o, s in zip(out, sizes)]).to(t.device)


def to_main(pieces: list[torch.Tensor], take: Callable[[int, torch.Tensor], None]) -> None:
    """Hand every rank's `pieces` to `take(i, piece)` on rank 0, in rank order (rank 0's own
    first), `i` the piece's index in its rank's list; the other ranks send theirs and return.

    Unlike gather_rows, nothing lands on ranks > 0 and rank 0 holds one received piece at a
    time (what it keeps is up to `take`): per-rank memory stays at the rank's own share. A rank
    may have no pieces (more ranks than chunks). Received pieces arrive on the CPU."""
    if world_size() == 1:
        for i, p in enumerate(pieces):
            take(i, p)
        return
    metas: list = [None] * world_size()
    # shapes and dtypes first (a few bytes each): rank 0 allocates exactly what arrives
    dist.all_gather_object(metas, [(tuple(p.shape), p.dtype) for p in pieces])
    dev = _comm_device()
    if not is_main():
        for p in pieces:
            if p.numel():  # an empty piece is announced by its shape alone
                dist.send(p.contiguous().to(dev), dst=0)
        return
    for i, p in enumerate(pieces):
        take(i, p)
    for src in range(1, world_size()):
        for i, (shape, dtype) in enumerate(metas[src]):
            buf = torch.empty(shape, dtype=dtype, device=dev)
            if buf.numel():
                dist.recv(buf, src=src)
            take(i, buf.cpu())


def mean_over_ranks(value: float) -> float:
    """The mean of a per-rank scalar (each rank's loss on its shard) across ranks."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def max_over_ranks(values: list[int]) -> list[int]:
    """Element-wise max of small per-rank integers (flags) across ranks: one collective, so
    every rank takes the same branch (stop at this step, diverged, refused)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.long, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def host_collectives() -> bool:
    """Whether a collective on small flags costs no device sync: one process, or gloo on CPU
    tensors (NCCL moves CUDA tensors, and reading the result back waits for the device)."""
    return world_size() == 1 or _comm_device().type == "cpu"


def _comm_device() -> torch.device:
    """NCCL moves only CUDA tensors; gloo only CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
