"""A run dir's guards: one process at a time (the lock), deletions only inside the runs dir
(never through a symlink), the check of an existing run dir against the spec, and the
DVC-facing copies of a finished run's results (`publish`). Torch-free: a finished cell is
re-published without importing torch (launch.py).

The lock is `flock` on `runs/<profile>/.<run_id>.lock`, beside the run dir (DVC deletes and
restores the run dir itself; the lock file outlives that). flock belongs to the open file, so
the kernel drops it when the holder exits, however it exits: a stale lock never blocks. The
holder writes its pid and host into the file for the refusal message. The runner takes it at
the run's first write (`Run.describe`), after the read-only checks, so a refused run writes
nothing, and checks the run dir again under it before discarding a stale one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
from pathlib import Path

from pixbench.config.schema import spec_diff
from pixbench.errors import UserError
from pixbench.runio import (CKPT_NAME, atomic_write_json, read_json, real_dir, under_root,
                            writable_dir)

METRICS = "metrics.json"


class RunLock:
    """The exclusive lock on one run dir; `acquire` refuses (one line: the run dir, the
    holder's pid) when another process holds it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir.parent / f".{self.run_dir.name}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        writable_dir(self.path.parent)
        try:  # O_NOFOLLOW: a link planted at the lock's name is not truncated through
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as exc:  # not inherited by children (O_CLOEXEC is Python's default)
            raise UserError(f"{self.path}: cannot open the run-dir lock ("
                            f"{'a symbolic link' if exc.errno == errno.ELOOP else exc.strerror})"
                            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.run_dir} is in use by {holder} (lock {self.path}); wait for "
                            "it to end or stop it, then run the same command again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # drops the flock


def remove_run_dir(run_dir: Path, root: Path, *, dry: bool = False) -> None:
    """Delete a run dir, only inside the runs root and never through a symlink (`dry`: only
    check that it may be deleted)."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink():
        raise UserError(f"refusing to delete {run_dir}: it is a symbolic link "
                        f"(to {os.readlink(run_dir)})")
    real = under_root(run_dir, root)  # symlinks followed: a one-line refusal outside `root`
    if real == Path(root).resolve():
        raise UserError(f"refusing to delete {run_dir}: it is the runs dir {root} itself")
    if not dry:
        shutil.rmtree(real)


def finished_metrics(run_dir: Path, spec, stale: str, root: Path, *, delete: bool) -> dict | None:
    """Check an existing run dir against the spec: its metrics when finished with this spec;
    None when there is nothing (left) to reuse. Another spec's run dir is an error naming the
    differing fields, unless stale == "restart": then it is discarded (what DVC does after a
    params change) when `delete`, else only checked to lie inside the runs dir `root`."""
    spec_path = run_dir / "spec.json"
    if not run_dir.exists() and not run_dir.is_symlink():
        return None
    refuse_links_out(run_dir, root)
    if spec_path.exists():
        old = read_json(spec_path, "run spec")
        if old.get("digest") == spec.digest():
            metrics = run_dir / METRICS
            return read_json(metrics, "metrics") if metrics.exists() else None
        if stale != "restart":
            diff = spec_diff(old.get("spec", {}), spec.canonical())
            what = run_dir / CKPT_NAME if (run_dir / CKPT_NAME).exists() else spec_path
            raise UserError(f"{what} was written for another spec "
                            f"({'; '.join(diff[:3]) or 'digest'}); pass --stale restart to discard it")
    elif (run_dir / CKPT_NAME).exists() and stale != "restart":
        raise UserError(f"{run_dir / CKPT_NAME} has no spec.json beside it; pass --stale restart")
    remove_run_dir(run_dir, root, dry=not delete)
    return None


def refuse_links_out(run_dir: Path, root: Path) -> None:
    """No symbolic link in the run dir leads out of the runs dir `root`: the run would write
    through it (ckpt/ -> elsewhere gets last.pt) or reuse what it points at (metrics.json ->
    elsewhere is re-published). Checked before anything is read or written."""
    base = Path(root).resolve()
    for dirpath, dirnames, filenames in os.walk(run_dir):  # links are listed, not descended
        for name in dirnames + filenames:
            entry = Path(dirpath) / name
            if not entry.is_symlink():
                continue
            real = entry.resolve()
            if real != base and base not in real.parents:
                raise UserError(f"{entry}: a symbolic link out of {root} (to "
                                f"{os.readlink(entry)}); remove it, or the run dir")


def dvc_file(paths, kind: str, profile: str, run_id: str) -> Path:
    """reports/{metrics,curves}/<profile>/<run_id>.json: one place for the DVC-facing names."""
    return Path(paths.reports_dir) / kind / profile / f"{run_id}.json"


def publish(paths, spec, metrics: dict, curve_path: Path) -> None:
    """The DVC-facing copies of a run's results, beside its run dir: the numeric metrics (a
    plain output, cache: false: the detail behind the profile's summary.json, which is what
    `dvc metrics show` lists) and the learning curve (declared as `plots:`)."""
    files = {dvc_file(paths, "metrics", spec.profile, spec.run_id): headline(metrics)}
    if curve_path.exists():
        files[dvc_file(paths, "curves", spec.profile, spec.run_id)] = read_json(curve_path,
                                                                                "curve")
    for path in files:  # both targets checked before the first write
        real_dir(path.parent, paths.reports_dir)
    for path, obj in files.items():
        atomic_write_json(path, obj, root=paths.reports_dir)


def headline(metrics: dict) -> dict:
    """The numbers of a metrics dict (no identifiers, no flags): what `dvc metrics` shows."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}

