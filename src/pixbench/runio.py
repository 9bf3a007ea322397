"""Run directories: atomic writes, the self-describing manifest, the one checkpoint path.

A run directory holds spec.json, manifest.json, metrics.json and ckpt/last.pt. Every file is
written to a temp file in the same directory and renamed, so a kill never leaves half a file,
in the directory's real path, which must lie below its root (the runs, reports or cache dir):
a symbolic link never carries a write out of it (writable_dir).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pixbench.errors import UserError

CKPT_NAME = "ckpt/last.pt"


def under_root(path: Path | str, root: Path | str) -> Path:
    """`path` resolved (symlinks followed, `..` folded), refused with a UserError unless it is
    `root` itself or lies below it: a name that became a path never escapes its root. `path`
    may be relative to the working directory, like `root`; neither needs to exist yet."""
    root_abs = Path(root).expanduser().resolve()
    resolved = Path(path).expanduser().resolve()
    if resolved != root_abs and root_abs not in resolved.parents:
        raise UserError(f"{path}: outside {root} (refused: names must not leave their root)")
    return resolved


# The dirs config.Paths puts caches, runs, reports and logs in: every Paths announces its dirs
# here (config imports runio, so runio cannot ask config), so that a write below one of them
# never leaves it through a symbolic link, whichever module calls the writer.
_WRITE_ROOTS: set[Path] = set()


def add_write_roots(*roots: Path | str | None) -> None:
    _WRITE_ROOTS.update(Path(r) for r in roots if r is not None)


def real_dir(path: Path | str, root: Path | str | None = None) -> Path:
    """The real path of directory `path` (symlinks resolved; it need not exist), refused with
    one line naming `path` when it leads out of its root (`root`, else every announced root
    that `path` lies below as written) through a symbolic link. Creates nothing: a writer of
    several files checks every target before it writes the first."""
    path = Path(path)
    real = path.resolve()
    for r in [Path(root)] if root is not None else _root_naming(path):
        base = r.resolve()
        if real != base and base not in real.parents:
            raise UserError(f"{path}: leads out of {r} (to {real}) through a symbolic link; "
                            "refusing to write there")
    return real


def writable_dir(path: Path | str, root: Path | str | None = None) -> Path:
    """real_dir(path, root), created when missing: the place a writer writes in. One line
    naming `path` when it cannot be created (not writable, a file in the way)."""
    real = real_dir(path, root)
    try:
        real.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create the directory "
                        f"({exc.strerror or exc.__class__.__name__})") from None
    return real


def _root_naming(path: Path) -> list[Path]:
    """The announced root that `path` lies below as written (no link followed); of nested
    roots the innermost, so that a root which is itself a link (runs -> /scratch/runs) inside
    another root stays writable."""
    here = os.path.abspath(path)
    naming = [r for r in _WRITE_ROOTS
              if os.path.commonpath([here, os.path.abspath(r)]) == os.path.abspath(r)]
    return sorted(naming, key=lambda r: len(os.path.abspath(r)))[-1:]


def atomic_write_bytes(path: Path, data: bytes, *, root: Path | str | None = None) -> None:
    """`path` whole or not at all (atomic_write_with)."""
    atomic_write_with(path, lambda f: f.write(data), root=root)


def atomic_write_with(path: Path, fill, *, root: Path | str | None = None) -> None:
    """`path` whole or not at all, its bytes written by `fill(binary file)`: a temp file in its
    real parent dir (writable_dir: never out of `root` through a link), fsync, rename. A link
    at `path` itself is replaced, not written through. An OS error (not writable, disk full)
    is a one-line UserError naming `path`."""
    path = Path(path)
    target = writable_dir(path.parent, root) / path.name
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UserError(f"{path}: cannot write ({exc.strerror or exc.__class__.__name__})"
                            ) from None
        raise


def atomic_write_json(path: Path, obj: Any, *, root: Path | str | None = None) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(),
                       root=root)


def read_json(path: Path, what: str = "file") -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: corrupt {what} (not valid JSON)") from None


def save_checkpoint(path: Path, state: dict, *, root: Path | str | None = None) -> None:
    """torch.save to a temp file, fsync, rename: the checkpoint is always whole."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue(), root=root)


def load_checkpoint(path: Path) -> dict:
    """weights_only=True: a checkpoint handed to a user holds tensors and plain containers,
    and one that would run code on unpickling is refused."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds on truncated or foreign files
        raise UserError(f"{path}: unreadable checkpoint ({exc.__class__.__name__})") from None


def load_arrays(path: Path, what: str = "arrays") -> dict:
    """Every array of an .npz (an .npy's one as "arr_0"), read into memory with
    allow_pickle=False: an object array, the only kind whose loading runs code, is refused like
    a corrupt file, with a UserError naming it. With load_checkpoint (torch) and read_json this
    is the read path for files read back (tests/test_hostile_reads.py); YAML is safe_load'ed."""
    import zipfile

    import numpy as np

    try:
        got = np.load(Path(path), allow_pickle=False)
        if isinstance(got, np.ndarray):
            return {"arr_0": got}
        with got:
            return {name: got[name] for name in got.files}
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: unreadable {what} ({exc.__class__.__name__})") from None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict:
    """SHA and dirty flag of the checkout, recorded at run time (not submit time)."""
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_sha": sha, "git_dirty": bool(status) if status is not None else None}


def device_info(device: str) -> dict:
    import torch

    info = {"device": device, "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "vendor_id" and "cpu_vendor" not in info:
                info["cpu_vendor"] = value.strip()
            elif key.strip() == "model name" and "model" not in info:
                info["cpu"] = info["model"] = value.strip()
        info.pop("model", None)
    except OSError:
        pass
    info["kernels"] = kernel_settings()
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# Environment variables that change which CPU kernels run, hence the bits of every float result
# (issue 23: each changed a 50-step ViT run on one machine). MKL on AMD takes its generic branch
# unless told otherwise, which the CPU model alone does not show.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
              "MKL_DEBUG_CPU_TYPE", "OMP_NUM_THREADS")


def kernel_settings() -> dict:
    """The CPU kernel path as far as it can be read: ATen's dispatch capability (what torch
    actually picked) and the environment variables that steer ATen, oneDNN and MKL."""
    import torch

    return {"aten_capability": torch.backends.cpu.get_cpu_capability(),
            **{k: os.environ.get(k) for k in KERNEL_ENV}}


def versions() -> dict:
    import numpy
    import timm
    import torch

    import pixbench

    return {"python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "numpy": numpy.__version__, "pixbench": pixbench.__version__}


def run_manifest(seed: int | None, device: str) -> dict:
    return {**git_state(), "versions": versions(), **device_info(device), "seed": seed,
            "host": socket.gethostname(), "argv": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def describe_run(run_dir: Path, spec, seed: int, device: str, **extra: Any) -> None:
    """spec.json (resolved spec + digest) and manifest.json: every run dir describes itself."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "spec.json", {"digest": spec.digest(), "spec": spec.canonical()})
    atomic_write_json(run_dir / "manifest.json", {**run_manifest(seed, device), **extra})
