"""The prepare lock: one `pixbench data prepare` at a time per dataset cache.

Two prepares of one spec share the cache's name and their work dir (stream.work_dir: a digest
of the spec and the file list). Run together, one compacted a split to one channel while the
other still wrote three, or both swapped in and both failed with the cache gone (issue 27). So
a prepare holds an exclusive flock on `.{cache}.lock` beside the cache from before its plan to
after its swap; the file names the holder (pid, host, start).

A second prepare of the same cache waits, with one note naming the holder, then uses the cache
the holder made (when it loads and is for the same data config: the same images, just read)
or, if the holder made none (it failed or was killed), prepares or resumes it itself. Waiting,
not refusing, because the realistic collisions are automated (a DVC queue or two studies each
running the prepare stage, a local prepare beside its SLURM merge job): both end with the right
cache and the decoding is done once, where a refusal would fail one of them for no mistake of
the user's. A stuck holder is named, so it can be stopped; Ctrl-C ends the wait; a killed
holder never blocks (the kernel drops its flock).

SLURM shard jobs of one plan decode disjoint chunks side by side: they hold the lock shared,
the merge job exclusively. The last holder removes the file; a waiter that then wins the flock
of the removed file sees that the path no longer names it and locks the new one. flock works
between NFS clients (Linux maps it to POSIX locks) and on Lustre mounted with `flock`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from pixbench.errors import UserError


def lock_path(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.lock")


def _open(path: Path) -> int:
    try:  # O_NOFOLLOW: a link planted at the lock's name is not followed (nor truncated through)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise UserError(f"{path}: cannot open the prepare lock ({why})") from None


def _names_it(fd: int, path: Path) -> bool:
    """Whether `path` is still the file open as `fd` (not removed by the holder before us)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder(fd: int) -> str:
    text = os.pread(fd, 300, 0).decode(errors="replace").strip()
    return text or "another process (a SLURM shard job of this prepare?)"


def _acquire(path: Path, out_dir: Path, shared: bool) -> tuple[int, bool]:
    """The open, locked lock file and whether another holder had to be waited for."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    waited = False
    while True:
        fd = _open(path)
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    print(f"note: {out_dir} is being prepared by {_holder(fd)} (lock {path}); "
                          "waiting for it to finish", file=sys.stderr, flush=True)
                waited = True
                fcntl.flock(fd, mode)
            if _names_it(fd, path):
                return fd, waited
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed the file we waited on: lock the one there now


def _release(fd: int, path: Path, shared: bool) -> None:
    """Remove the lock file when no one else holds it, then drop the flock."""
    try:
        if shared:  # the last shard out removes it: only then is an exclusive lock free
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
        if _names_it(fd, path):
            path.unlink()
    except OSError:
        pass  # a lock file left behind is harmless: the next prepare reuses it
    finally:
        os.close(fd)


@contextlib.contextmanager
def holding(out_dir: Path, shared: bool = False):
    """Hold the prepare lock of the cache `out_dir` (its parent dir must exist); yields whether
    it had to wait for another holder."""
    path = lock_path(Path(out_dir))
    fd, waited = _acquire(path, Path(out_dir), shared)
    try:
        if not shared:
            os.ftruncate(fd, 0)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(),
                      0)
    except OSError:  # a full disk: the lock holds without its note
        pass
    try:
        yield waited
    finally:
        _release(fd, path, shared)
