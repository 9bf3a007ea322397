"""Run directories: atomic writes, the self-describing manifest, the one checkpoint path.

A run directory holds spec.json, manifest.json, metrics.json and ckpt/last.pt. Every file is
written to a temp file in the same directory and renamed, so a kill never leaves half a file.
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path, what: str = "file") -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: corrupt {what} (not valid JSON)") from None


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file, fsync, rename: the checkpoint is always whole."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    """weights_only=True: a checkpoint handed to a user holds tensors and plain containers,
    and one that would run code on unpickling is refused."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds on truncated or foreign files
        raise UserError(f"{path}: unreadable checkpoint ({exc.__class__.__name__})") from None


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
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


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
