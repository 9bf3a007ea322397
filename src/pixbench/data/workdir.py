"""The work dir of a streaming ImageFolder prepare (stream.py): its plan, on disk and read in
slices, its done markers, and its image arrays.

A plan of ImageNet-1k used to be one 88 MiB plan.json of every path: the submitting process
held the scan, the plan dict and its JSON (409 MiB at 1.33M files, benchsuite.plan_state)
and every shard and the merge parsed all of it (+173 MiB each) to use 1/K (issue 26). Now:

  plan.json          the header: spec, classes, image size, chunk, each split's shape
  {split}_paths.bin  every file path, UTF-8 (surrogateescape), each ending in NUL
  {split}_paths.idx  little-endian int64 byte offsets of the paths (N + 1): path k is
                     bin[idx[k]:idx[k + 1] - 1], so a chunk reads its paths and nothing else
  {split}_labels.npy written class by class (the bytes np.save writes)

The scan streams class folder by class folder (sources._class_files, the list each class gets
from sources.scan_image_folder, with its checks and messages), so the submitting process holds
one class's file names, never the whole list. The image arrays are made by the first decode of
the plan (outputs), on the node that decodes, not by the submitting process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from pixbench.data import cache, npyfile
from pixbench.data.sources import (FolderSplit, _class_files, check_classes, listed,  # noqa: PLC2701
                                   read_error, split_folder)
from pixbench.errors import UserError

PLAN = "plan.json"
DONE = "done"
# 2: a marker's "gray" is by pixels, not file mode; 3: the paths in their own files (read by
# slices), the chunk size the plan's (from N, shards and workers) and no longer part of the
# work dir's name, the image arrays made by the first decode. An older work dir won't resume.
PLAN_VERSION = 3
INDEX = np.dtype("<i8")


def work_dir(out_dir: Path, digest: str) -> Path:
    return out_dir.with_name(f".{out_dir.name}.work-{digest}")


def cache_of(work: Path) -> Path:
    """The cache a work dir builds (work_dir's inverse)."""
    return work.with_name(work.name[1:].rsplit(".work-", 1)[0])


# -------------------------------------------------------------------------------- the scan


def _class_dirs(split_dir: Path) -> list[Path]:
    """The visible sub-folders of a split, sorted: its classes (as scan_image_folder has them)."""
    return sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _write_labels(path: Path, counts: list[int]) -> None:
    """labels.npy of `counts[c]` images of class c, in order, written class by class: the
    header and bytes np.save gives np.repeat(arange(C), counts)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int64)), "fortran_order": False,
              "shape": (int(sum(counts)),)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for c, n in enumerate(counts):
            f.write(np.full(n, c, dtype=np.int64).tobytes())


def scan_split(root: Path, split: str, into: Path, digest) -> tuple[FolderSplit, int]:
    """Scan `root/split` into `into`'s paths, index and labels files, updating `digest` with
    the file list; returns the split (its classes; no files or labels held) and its number of
    images. The same files and refusals as sources.scan_image_folder."""
    split_dir = split_folder(root, split)
    try:
        dirs = _class_dirs(split_dir)
    except OSError as exc:
        raise read_error(Path(exc.filename or split_dir), exc) from None
    counts, pos = {}, 0
    with open(into / f"{split}_paths.bin", "wb") as out, \
            open(into / f"{split}_paths.idx", "wb") as index:
        index.write(np.zeros(1, INDEX).tobytes())
        for d in dirs:
            try:
                files = _class_files(d)
            except OSError as exc:
                raise read_error(Path(exc.filename or d), exc) from None
            names = [f.encode("utf-8", "surrogateescape") + b"\0" for f in files]
            blob = b"".join(names)
            counts[d.name] = len(names)
            out.write(blob)
            digest.update(f"\0{split}\0{d.name}\0".encode("utf-8", "surrogateescape") + blob)
            index.write((pos + np.cumsum([len(b) for b in names], dtype=INDEX)).tobytes())
            pos += len(blob)
    check_classes(split_dir, counts)
    _write_labels(into / f"{split}_labels.npy", list(counts.values()))
    n = int(sum(counts.values()))
    return FolderSplit(split_dir, tuple(counts), (), np.zeros(0, np.int64)), n


def digest_head(cfg, root: Path):
    """The work dir's name starts from spec and root (scan_split adds the file list); not the
    chunk size: a resume with other worker counts finds the work dir and keeps its chunks."""
    h = hashlib.sha256()
    head = {"v": PLAN_VERSION, "spec": cfg.model_dump(), "root": str(root)}
    h.update(json.dumps(head, sort_keys=True).encode())
    return h


# ---------------------------------------------------------------------------- reading it


def read_plan(work: Path) -> dict:
    return json.loads((work / PLAN).read_bytes().decode("utf-8", "surrogateescape"))


def paths(work: Path, split: str, lo: int, hi: int) -> list[str]:
    """Paths lo..hi-1 of a split: 8 (hi - lo + 1) bytes of the index and their bytes of the
    paths file are read, whatever N."""
    idx = np.fromfile(work / f"{split}_paths.idx", dtype=INDEX, count=hi - lo + 1,
                      offset=INDEX.itemsize * lo)
    if len(idx) != hi - lo + 1:
        raise UserError(f"{work / (split + '_paths.idx')}: shorter than the plan says; "
                        "remove the work dir and prepare again")
    with open(work / f"{split}_paths.bin", "rb") as f:
        f.seek(int(idx[0]))
        raw = f.read(int(idx[-1] - idx[0]))
    return [b.decode("utf-8", "surrogateescape") for b in raw.split(b"\0")[:-1]]


def chunk_ids(plan: dict) -> list[tuple[str, int]]:
    """Every chunk of the prepare, train then val: (split, index)."""
    n = {s: -(-sp["shape"][0] // plan["chunk"]) for s, sp in plan["splits"].items()}
    return [(s, i) for s in cache.SPLITS for i in range(n[s])]


def shard(ids: list, k: int, shards: int) -> list:
    """The k-th of `shards` contiguous, disjoint, near-equal ranges of chunk ids."""
    lo, hi = len(ids) * k // shards, len(ids) * (k + 1) // shards
    return ids[lo:hi]


def merged(work: Path) -> bool:
    """The merge wrote this work dir's manifest and dropped its plan but was killed before the
    swap-in: its cache is whole, and `finish` only swaps it in."""
    return (work / cache.MANIFEST).is_file() and not (work / PLAN).is_file()


def drop_plan(work: Path) -> None:
    """The plan's markers and paths: not part of the cache."""
    shutil.rmtree(work / DONE, ignore_errors=True)
    for s in cache.SPLITS:
        for name in (f"{s}_paths.bin", f"{s}_paths.idx", f"{s}_compacted.json"):
            (work / name).unlink(missing_ok=True)


def marker(work: Path, split: str, i: int) -> Path:
    return work / DONE / f"{split}-{i:07d}.json"


def is_done(work: Path, split: str, i: int) -> bool:
    return marker(work, split, i).is_file()


def missing(work: Path, ids: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The chunks of `ids` without a done marker."""
    return [(s, i) for s, i in ids if not is_done(work, s, i)]


def chunk_names(ids: list[tuple[str, int]], k: int = 4) -> str:
    """`train-0000003, val-0000000 and 5 more`: chunks as their markers are named."""
    return listed([f"{s}-{i:07d}" for s, i in ids], k)


# ---------------------------------------------------------------------- the image arrays


@contextlib.contextmanager
def writing(path: Path):
    """An OSError while writing `path` (as named in the cache) is a one-line UserError."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"{path}: cannot write the dataset cache ({cache.reason(exc)}); "
                        "nothing was changed") from None


def outputs(work: Path, plan: dict, ids: list[tuple[str, int]]) -> dict:
    """The image arrays, made by the first decode of the plan (not on the submitting node: at
    256px ImageNet-1k's are 244 GiB to reserve), each whole or not at all (a temp file
    renamed) under an flock of plan.json (shards that start together); then the blocks of
    the rows still to decode in `ids` are reserved (npyfile.py: a full disk is an error before
    decoding them, never a SIGBUS). Returns each split's data offset."""
    out_dir = Path(plan["out_dir"])
    fd = os.open(work / PLAN, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for s in cache.SPLITS:
            path = work / f"{s}_images.npy"
            for stale in work.glob(f".{path.name}.*.tmp"):  # a killed creator's (we hold the lock)
                stale.unlink(missing_ok=True)
            if not path.is_file():
                with writing(out_dir / path.name):
                    _sparse(path, plan["splits"][s]["shape"])
    finally:
        os.close(fd)
    offsets = {s: npyfile.data_offset(work / f"{s}_images.npy") for s in cache.SPLITS}
    c = plan["chunk"]
    for s in cache.SPLITS:
        shape = plan["splits"][s]["shape"]
        row = int(np.prod(shape[1:]))
        todo = [i for s2, i in ids if s2 == s and not is_done(work, s, i)]
        for lo, hi in _runs(todo):  # done chunks between them keep their rows
            with writing(out_dir / f"{s}_images.npy"):
                _reserve(work / f"{s}_images.npy", offsets[s] + lo * c * row,
                         (min(shape[0], hi * c) - lo * c) * row)
    return offsets


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted chunk indices -> [lo, hi) runs of consecutive ones."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return [(a, b) for a, b in runs]


def _sparse(path: Path, shape: list) -> None:
    """A uint8 .npy of `shape` with the header np.save writes, its data a hole for now."""
    tmp = path.with_name(f".{path.name}.{cache.host_tag()}-{os.getpid()}.tmp")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
              "fortran_order": False, "shape": tuple(int(n) for n in shape)}
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.truncate(f.tell() + int(np.prod(shape)))
    os.replace(tmp, path)


def _reserve(path: Path, pos: int, length: int) -> None:
    """Allocate the blocks of bytes pos..pos+length of `path` (ENOSPC when they do not fit);
    zeros written where a filesystem has no fallocate, as npyfile.reserve does."""
    fd = os.open(path, os.O_WRONLY)
    try:
        try:
            os.posix_fallocate(fd, pos, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            zeros = memoryview(bytes(npyfile.ZEROS))
            for at in range(pos, pos + length, npyfile.ZEROS):
                npyfile.write_at(fd, at, zeros[:min(npyfile.ZEROS, pos + length - at)])
    finally:
        os.close(fd)
