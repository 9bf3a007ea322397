"""The training input pipeline: each rank reads and augments only its own shard of every
global batch, in loader worker processes or on the GPU, with prefetch overlapping compute.

A batch is a pure function of (seed, epoch, step): `StepBatches[j]` gathers this rank's rows of
the epoch's j-th global batch from the uint8 images (sorted reads from a memory map), draws the
*global* batch's augmentation parameters and MAE masking noise from the step's generator exactly
as one process would, and keeps this rank's rows of them (data/augment.py). So the ranks' shards
concatenate to the single-process batch bit for bit, the number of loader workers changes
nothing, and a resumed run starts the loader at its restored step.

Where augmentation runs: with a CUDA device the uint8 shard goes to the GPU (pinned memory,
non_blocking) and is augmented there, so the CPU only gathers and copies bytes; on the CPU it
runs in the loader workers (or in the training process with 0 workers).

torch's DataLoader provides the worker processes, prefetching and pinning. The streaming-dataset
libraries (webdataset, litdata, mosaicml-streaming) were declined: they stream sequential
shards with their own shuffle, while the prepared cache is one random-access uint8 array (3 GB
for ImageNet-1k at 28px: it sits in the page cache) and batch order must stay `epoch_order`'s for
committed results and resume to stay exact; JPEG decoders (simplejpeg, pyturbojpeg) serve
`data prepare`, not this loader, which never decodes.
"""

from __future__ import annotations

import mmap
import os
import signal
from dataclasses import dataclass, replace
from functools import partial
from typing import Iterator

import numpy as np
import torch

from pixbench import distributed
from pixbench.config import AugmentConfig
from pixbench.data import augment
from pixbench.errors import UserError
from pixbench.procs import worker_dies_with
from pixbench.rng import epoch_order, generator

PREFETCH = 2  # batches queued per worker: enough to hide one slow read behind a step


@dataclass(frozen=True)
class MapRef:
    """A read-only memory map by reference: the file, where the array's bytes start in it,
    and the file's identity when the map was made (a cache swapped in since is refused)."""

    path: str
    offset: int
    shape: tuple[int, ...]
    dtype: str
    ident: tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns)

    @classmethod
    def of(cls, arr: np.ndarray) -> "MapRef | None":
        """The reference of a C-ordered read-only np.memmap (a view of one too), else None."""
        base = arr
        while base is not None and not isinstance(base, mmap.mmap):
            base = base.base
        if not isinstance(arr, np.memmap) or base is None or getattr(arr, "mode", None) != "r" \
                or not arr.flags.c_contiguous or arr.filename is None:
            return None
        # numpy maps from the offset rounded down to the allocation granularity (np.memmap);
        # the array's first byte lies this far past the map's start
        start = arr.offset - arr.offset % mmap.ALLOCATIONGRANULARITY
        into = arr.ctypes.data - np.frombuffer(base, dtype=np.uint8).ctypes.data
        st = os.stat(arr.filename)
        return cls(arr.filename, start + into, tuple(arr.shape), arr.dtype.str,
                   (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))

    def open(self) -> np.memmap:
        st = os.stat(self.path)
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != self.ident:
            raise UserError(f"{self.path}: replaced while the run was starting its loader "
                            "workers (a prepare finished meanwhile?); start the run again")
        return np.memmap(self.path, dtype=np.dtype(self.dtype), mode="r", offset=self.offset,
                         shape=self.shape)


class Rows:
    """Rows `rows` of a uint8 (N, H, W, C) array (numpy, usually a memory map), never copied
    whole: indexing gathers only the asked rows and returns a torch tensor.

    Pickled (a DataLoader worker under spawn or forkserver gets its dataset so), a memory map
    travels as its `MapRef` and each worker maps the file again: a worker's memory is the rows
    it reads, not the cache (pickling an np.memmap copies every byte: 47 MB for a 47 MB map).
    Fork needs none of this; Python 3.14 makes forkserver Linux's default."""

    def __init__(self, images: np.ndarray, rows: np.ndarray) -> None:
        self.images, self.rows = images, np.asarray(rows, dtype=np.int64)
        self._ref = MapRef.of(images)  # now: the file as it was when it was loaded

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self._ref is not None:
            state["images"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.images is None:
            self.images = self._ref.open()

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def gather(self, idx) -> np.ndarray:
        """Rows idx (into this subset), read in ascending file order, returned in idx's order."""
        src = self.rows[np.asarray(idx, dtype=np.int64)]
        order = np.argsort(src, kind="stable")
        out = np.empty((len(src), *self.images.shape[1:]), dtype=self.images.dtype)
        out[order] = self.images[src[order]]  # (n, H, W, C)
        return out

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, torch.Tensor):
            key = key.numpy()
        return torch.from_numpy(self.gather(np.arange(len(self.rows))[key]))


@dataclass
class Batch:
    """This rank's rows of one global batch: x augmented and standardised (b, C, H, W), or
    still uint8 (b, H, W, C) with the `draws` to augment it with on the device."""

    x: torch.Tensor
    y: torch.Tensor | None
    noise: torch.Tensor | None  # (b, L) MAE masking noise
    draws: augment.Draws | None = None

    def pin_memory(self) -> "Batch":
        """DataLoader's pin thread calls this (page-locked memory: async host-to-device)."""
        def pin(t):
            return None if t is None else t.pin_memory()

        draws = None if self.draws is None else {k: v.pin_memory() for k, v in self.draws.items()}
        return Batch(pin(self.x), pin(self.y), pin(self.noise), draws)

    def to(self, device: torch.device, mean: torch.Tensor, std: torch.Tensor,
           cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(x (b, C, H, W) float on device, y, noise): augmented on the device when still uint8."""
        nb = device.type == "cuda"

        def move(t):
            return None if t is None else t.to(device, non_blocking=nb)

        x = move(self.x)
        if x.dtype == torch.uint8:
            x = augment.normalize(x, mean, std, cfg, draws=augment.to_device(self.draws, device, nb))
        return x, move(self.y), move(self.noise)


class StepBatches(torch.utils.data.Dataset):
    """Item j: this rank's `Batch` of step j of `epoch` (global step `first_step + j`)."""

    def __init__(self, images: Rows, labels: torch.Tensor | None, *, batch_size: int, seed: int,
                 epoch: int, first_step: int, cfg: AugmentConfig, mean: torch.Tensor,
                 std: torch.Tensor, augment_here: bool, noise_tokens: int | None = None,
                 shard: slice | None = None) -> None:
        self.images, self.labels, self.batch_size, self.seed = images, labels, batch_size, seed
        self.first_step, self.cfg, self.mean, self.std = first_step, cfg, mean, std
        self.augment_here, self.noise_tokens = augment_here, noise_tokens
        self.order = epoch_order(len(images), seed, epoch)  # (N,) shared by forked workers
        # this rank's rows of each global batch (`shard`: another rank's, for benchmarks)
        self.mine = distributed.shard_rows(batch_size) if shard is None else shard

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __getitem__(self, j: int) -> Batch:
        """The batch without `draws` (for the device path they are added where it is used:
        drawing again is cheaper than sending a few small tensors between processes)."""
        b = self.batch_size
        idx = self.order[j * b:(j + 1) * b]  # (B,) the global batch
        gen = generator(self.seed, self.first_step + j)
        # every draw of the global batch, in the order one process takes them, then our rows
        draws = augment.draw(b, self.images.shape[3], self.cfg, gen)
        noise = (torch.rand(b, self.noise_tokens, generator=gen)[self.mine].clone()  # (b, L)
                 if self.noise_tokens else None)
        mine = idx[self.mine]
        x = torch.from_numpy(self.images.gather(mine.numpy()))  # (b, H, W, C) uint8
        y = None if self.labels is None else self.labels[mine]
        if self.augment_here:
            x = augment.normalize(x, self.mean, self.std, self.cfg,
                                  draws=augment.rows(draws, self.mine))  # (b, C, H, W)
        return Batch(x, y, noise)

    def draws(self, j: int) -> augment.Draws:
        """This rank's rows of step j's augmentation draws."""
        gen = generator(self.seed, self.first_step + j)
        return augment.rows(augment.draw(self.batch_size, self.images.shape[3], self.cfg, gen),
                            self.mine)


def auto_workers(device: torch.device) -> int:
    """Loader workers when none are asked for (reports/bench/scale-loader.md measures both):
    0 on the CPU, where a worker competes with the training step for the cores (on 2 cores
    it slowed the default profile's short p=4 step, and gained on p=1 only in some runs); on a GPU 2 (1 with 2 cores), which only gather rows and draw
    parameters (~1 core's work for 3x an H100's ViT-S/2 demand) so that a slow read overlaps
    the step instead of stalling it."""
    if device.type != "cuda":
        return 0
    return max(1, min(2, len(os.sched_getaffinity(0)) - 1))


def _quiet_worker(parent: int, _: int) -> None:
    """A worker leaves stop signals to the training process (SLURM signals the whole step):
    the run checkpoints at its next step boundary and the workers end with it. If the
    training process is killed outright, the workers go at once (worker_dies_with), not at
    torch's next 5 s check of their parent."""
    for s in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
    worker_dies_with(parent)


def batches(dataset: StepBatches, start: int, *, workers: int, pin: bool = False,
            start_method: str | None = None) -> Iterator[Batch]:
    """Items start.. of `dataset`, in order, produced `workers` processes ahead (0: here);
    uint8 batches get their draws here. `start_method`: how workers start (fork, spawn,
    forkserver); None: the platform's default."""
    steps = range(start, len(dataset))
    if workers == 0:
        items = (dataset[j].pin_memory() if pin else dataset[j] for j in steps)
    else:  # its own generator: DataLoader would otherwise take its seed from the global RNG
        items = torch.utils.data.DataLoader(
            dataset, batch_size=None, sampler=steps, num_workers=workers, pin_memory=pin,
            prefetch_factor=PREFETCH, worker_init_fn=partial(_quiet_worker, os.getpid()),
            generator=torch.Generator().manual_seed(0), multiprocessing_context=start_method)
    for j, batch in zip(steps, items):
        yield batch if dataset.augment_here else replace(batch, draws=dataset.draws(j))


def epoch_batches(images: Rows, labels: torch.Tensor | None, cfg, seed: int, state, *,
                  mean: torch.Tensor, std: torch.Tensor, device: torch.device,
                  workers: int | None = None, noise_tokens: int | None = None) -> Iterator[Batch]:
    """The rest of epoch `state.epoch` from `state.epoch_step` for a task config with
    `batch_size` and `augment`; augmentation on the device when it is a GPU."""
    on_gpu = device.type == "cuda"
    ds = StepBatches(images, labels, batch_size=cfg.batch_size, seed=seed, epoch=state.epoch,
                     first_step=state.global_step - state.epoch_step, cfg=cfg.augment,
                     mean=mean, std=std, augment_here=not on_gpu, noise_tokens=noise_tokens)
    n = auto_workers(device) if workers is None else workers
    return batches(ds, state.epoch_step, workers=n, pin=on_gpu)
