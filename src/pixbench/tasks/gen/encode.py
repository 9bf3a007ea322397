"""`pixbench vq encode` at scale: latents streamed to disk, straight from the images.

Sources. When the gen data source is an ImageFolder, images are decoded and centre-crop-resized
per item in DataLoader worker processes (`prepare.decode_file`: the very pixels `data prepare
--gen` would cache), as fast-DiT's extract_features does: no 256px cache of the whole dataset
is needed. Other sources read the memory-mapped gen cache, one chunk of rows at a time.

Writing. The latents and codes files are preallocated `.npy` files (every block reserved up
front, rows written by pwrite: data/npyfile.py) in a temp dir of the run, so a full disk is one
line before any encoding and never a SIGBUS; ranks encode contiguous runs of fixed CHUNK-row
chunks (the same rows and batches whatever the world size, so 1 and N ranks write the same
bytes) straight into their disjoint row ranges.
After a barrier rank 0 hashes them, moves them into the run dir and writes the manifest last:
the manifest is the commit point, a killed encode leaves no manifest and starts over.
The scale factor is 1 / std of the train latents, accumulated over chunks in float64.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pixbench import distributed
from pixbench.data import npyfile
from pixbench.data.prepare import decode_file
from pixbench.data.sources import FolderSplit, check_same_classes, scan_image_folder, shown
from pixbench.errors import UserError
from pixbench.models.vqgan import code_stats_from_counts
from pixbench.tasks.gen.tokenizer import CHUNK, encode_chunk, latent_geometry
from pixbench.procs import worker_dies_with

TMP_DIR = ".encode-tmp"
LATENT_FILES = tuple(f"{s}_{k}.npy" for s in ("train", "val")
                     for k in ("latents", "codes", "labels"))


class FolderImages(torch.utils.data.Dataset):
    """Rows `idx` of a scanned ImageFolder split as uint8 (size, size, channels) tensors."""

    def __init__(self, fs: FolderSplit, idx: np.ndarray, size: int, channels: int) -> None:
        self.files, self.idx, self.size, self.channels = fs.files, idx, size, channels

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.files[self.idx[i]]
        img, why = decode_file((path, self.size))  # (size, size, 1 | 3) uint8
        if img is None:
            raise UserError(f"{shown(path)}: cannot decode image ({why}); `vq encode` reads "
                            "every listed file (remove it, or prepare a cache with "
                            "data.skip_corrupt)")
        if img.shape[2] != self.channels:
            if self.channels == 1:
                raise UserError(f"{shown(path)}: a colour image, the tokenizer takes 1 channel")
            img = np.repeat(img, 3, axis=2)  # gray -> RGB, as prepare does for mixed splits
        return torch.from_numpy(np.array(img))  # PIL's buffer is read-only


def loader_workers() -> int:
    """Decode processes per rank: the cores this rank may use, less the main one, at most 8."""
    cpus = len(os.sched_getaffinity(0)) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(0, min(8, cpus - 1))


def _decoder(parent: int, _: int) -> None:
    """A decode worker ends with the encode (killed, OOM) at once, not at torch's next 5 s
    check of its parent."""
    worker_dies_with(parent)


def folder_chunks(fs: FolderSplit, idx: np.ndarray, rows: range, size: int,
                  channels: int) -> Iterator[np.ndarray]:
    """uint8 (b, size, size, C) batches of CHUNK rows over `rows` (a run of whole chunks)."""
    ds = torch.utils.data.Subset(FolderImages(fs, idx, size, channels), rows)
    workers = min(loader_workers(), -(-len(rows) // CHUNK))  # no idle decode processes
    loader = torch.utils.data.DataLoader(
        ds, batch_size=CHUNK, shuffle=False, num_workers=workers,
        prefetch_factor=4 if workers else None,
        worker_init_fn=functools.partial(_decoder, os.getpid()))
    for batch in loader:
        yield batch.numpy()


def array_chunks(images: np.ndarray, idx: np.ndarray, rows: range) -> Iterator[np.ndarray]:
    """The same batches from a (memory-mapped) uint8 (N, H, W, C) split: CHUNK rows at a time."""
    for start in range(rows.start, rows.stop, CHUNK):
        yield np.asarray(images[idx[start:min(rows.stop, start + CHUNK)]])


def my_rows(n: int) -> range:
    """This rank's rows: a contiguous run of whole CHUNK-row chunks (parallel.chunked's split)."""
    chunks = distributed.shard_range(-(-n // CHUNK))
    return range(min(n, chunks.start * CHUNK), min(n, chunks.stop * CHUNK))


def allocate(tmp: Path, split: str, n: int, model, size: int) -> None:
    """Rank 0 preallocates the split's latents (n, c, h, w) float32 and codes (n, h, w) int32,
    every block reserved (a full disk: OSError ENOSPC naming the file, before encoding)."""
    c, f = latent_geometry(model)
    h = size // f
    for kind, dtype, shape in (("latents", np.float32, (n, c, h, h)),
                               ("codes", np.int32, (n, h, h))):
        npyfile.create(tmp / f"{split}_{kind}.npy", dtype, shape)


@torch.no_grad()
def encode_into(model, tmp: Path, split: str, batches: Iterator[np.ndarray], rows: range,
                device: torch.device) -> None:
    """Encode this rank's batches into its rows of the preallocated files (pwrite: no memory
    map, so a disk that still runs out is an OSError, not a SIGBUS)."""
    files = {kind: tmp / f"{split}_{kind}.npy" for kind in ("latents", "codes")}
    offsets = {kind: npyfile.data_offset(path) for kind, path in files.items()}
    start = rows.start
    for x in batches:
        z, q = encode_chunk(model, x, device)  # (b, c, h, w), (b, h, w)
        npyfile.write_rows(files["latents"], offsets["latents"], start,
                           z.numpy().astype(np.float32, copy=False))
        npyfile.write_rows(files["codes"], offsets["codes"], start,
                           q.numpy().astype(np.int32, copy=False))
        start += len(x)
    if start != rows.stop:
        raise RuntimeError(f"{split}: encoded rows up to {start}, expected {rows.stop}")


@contextlib.contextmanager
def nothing_half_written(run_dir: Path):
    """An encode or commit that fails (a full disk, a quota, an unreadable image): the temp dir
    and every latents file in the run dir are removed (no latents without their manifest), and
    a failed write is one line naming the file."""
    try:
        yield
    except (OSError, UserError) as exc:
        shutil.rmtree(run_dir / TMP_DIR, ignore_errors=True)
        for name in LATENT_FILES:
            (run_dir / name).unlink(missing_ok=True)
        if isinstance(exc, UserError):
            raise
        raise UserError(f"{exc.filename or run_dir / TMP_DIR}: cannot write the latents "
                        f"({exc.strerror or exc}); nothing was kept") from None


def latent_std(path: Path) -> float:
    """std of every value of a float32 .npy, two passes over CHUNK rows in float64."""
    lat = np.load(path, mmap_mode="r")
    n = lat.size
    total = sum(lat[i:i + CHUNK].sum(dtype=np.float64) for i in range(0, len(lat), CHUNK))
    mean = total / n
    ss = sum(((lat[i:i + CHUNK].astype(np.float64) - mean) ** 2).sum()
             for i in range(0, len(lat), CHUNK))
    return float(np.sqrt(ss / n))


def codes_summary(path: Path, codebook_size: int) -> dict[str, float]:
    """Codebook usage and perplexity of a codes .npy, counted chunk by chunk."""
    codes = np.load(path, mmap_mode="r")
    counts = np.zeros(codebook_size, dtype=np.int64)
    for i in range(0, len(codes), CHUNK):
        counts += np.bincount(np.asarray(codes[i:i + CHUNK]).ravel(), minlength=codebook_size)
    return code_stats_from_counts(torch.from_numpy(counts))


def fresh_tmp(run_dir: Path) -> Path:
    """The run's temp dir, emptied by rank 0 (what a killed encode left), seen by all ranks."""
    tmp = run_dir / TMP_DIR
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    return tmp


def scan_folder(root: Path) -> dict[str, FolderSplit]:
    scans = {s: scan_image_folder(root, s) for s in ("train", "val")}
    check_same_classes(scans["train"], scans["val"])
    return scans
