"""Process lifetime: a child process that ends when its parent does.

A base module (standard library only) so that data loaders, study workers and the CLI's
`die_with_parent` can share it without importing the training tasks.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def pdeathsig(signum: int) -> bool:
    """prctl(PR_SET_PDEATHSIG): `signum` when the parent thread ends; False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def worker_dies_with(parent: int, signum: int = signal.SIGKILL) -> None:
    """In a worker process (image decoding, loader, study cell): `signum` as soon as `parent`,
    the process that started it, dies. Always, nohup or not: a pool's worker has no use
    without its parent and would otherwise sleep forever on a pipe nobody writes (its own
    copy keeps the pipe open). SIGKILL for workers that hold nothing worth saving; a study
    worker takes SIGTERM so its cell checkpoints first. Called first thing in the worker, so
    a parent already gone (pid changed: reparented) ends it now.

    Under forkserver (Python 3.14's default on Linux) the worker's parent is the fork server,
    not `parent`, and the server outlives `parent` while any worker lives (every worker holds
    the write end of the pipe whose EOF ends it; torch's own watchdog checks the server too):
    SIGKILL the training process and its loader workers, server and all, would sleep forever
    (tests/test_loader_spawn.py). So such a worker watches `parent` itself (_watch)."""
    if not pdeathsig(signum) or os.getppid() == parent:
        return
    if not _alive(parent):
        os.kill(os.getpid(), signum)
    threading.Thread(target=_watch, args=(parent, signum), daemon=True,
                     name="pixbench-parent-watch").start()


def _watch(parent: int, signum: int) -> None:
    """`signum` to this process once `parent` ends: a pidfd (readable when the process
    exits, Linux >= 5.3) or, where there is none, a check a second."""
    try:
        fd = os.pidfd_open(parent)
    except (AttributeError, OSError):
        while _alive(parent):
            time.sleep(1.0)
    else:
        select.select([fd], [], [])
    os.kill(os.getpid(), signum)


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting to be reaped, not someone else's process on its pid)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (ProcessLookupError, PermissionError):
        return False
    except OSError:  # no /proc: the signal said it exists
        return True
