""".npy files filled in place by row ranges, safe on a full disk.

A memory-mapped write into a sparse file allocates its disk block at the moment a page is
written back; on a full filesystem there is none and the kernel answers SIGBUS, which kills
the process without a message and leaves a half-written file (issue 27). So these files are
created with every block reserved (`posix_fallocate`, or zeros written where a filesystem has
no fallocate), which turns a full disk into ENOSPC before any work is done, and rows go in by
`pwrite`, never through a map: even a filesystem that cannot honour a reservation (copy on
write, compression) answers ENOSPC as an OSError, not as a signal.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

ZEROS = 1 << 20  # bytes per write when a filesystem has no fallocate


def reserve(fd: int, size: int) -> None:
    """Allocate every block of the first `size` bytes of `fd` (OSError ENOSPC when they do not
    fit)."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    # no fallocate on this filesystem: writing zeros allocates the blocks the same way
    have = os.fstat(fd).st_size
    block = bytes(ZEROS)
    for pos in range(have, size, ZEROS):
        write_at(fd, pos, memoryview(block)[:min(ZEROS, size - pos)])


def create(path: Path, dtype, shape: tuple) -> int:
    """A new .npy of zeros of `dtype` and `shape` with its blocks reserved; returns the byte
    offset of its data (the header's length). A full disk is an OSError naming `path`."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(int(n) for n in shape)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)  # the same header np.save writes
        offset = f.tell()
        f.flush()
        try:
            reserve(f.fileno(), offset + int(np.prod(shape)) * dtype.itemsize)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    return offset


def data_offset(path: Path) -> int:
    """The byte offset of an .npy file's data (parses the header only)."""
    with open(path, "rb") as f:
        fmt = np.lib.format
        version = fmt.read_magic(f)
        (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
        return f.tell()


def write_at(fd: int, pos: int, data) -> None:
    """All of `data` at byte `pos` of `fd` (pwrite may write less than asked)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def write_rows(path: Path, offset: int, start: int, rows: np.ndarray, sync: bool = False) -> None:
    """Rows `start:start + len(rows)` of the C-ordered .npy at `path` (data at `offset`);
    `sync`: on disk before returning (a marker written next may say they are)."""
    rows = np.ascontiguousarray(rows)
    row_bytes = rows[0].nbytes if len(rows) else 0
    fd = os.open(path, os.O_WRONLY)
    try:
        write_at(fd, offset + start * row_bytes, rows)
        if sync:
            os.fsync(fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(fd)
