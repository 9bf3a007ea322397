"""A SIGKILLed prepare (or SLURM shard task) takes its decode workers along (issue 26): each
pool worker asks for PR_SET_PDEATHSIG (procs.worker_dies_with, stream.start_pool's
initializer), else it would sleep forever on the pool's pipe, reparented to PID 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"
# The child: 2 decode workers on the tree. Decoding is slowed to 50 ms an image (wrapped
# before the pool forks, so the workers inherit it) so that the kill lands mid-decode on any
# machine: 160 images take ~4 s with 2 workers.
DRIVER = """
import sys, time
from pathlib import Path
from pixbench.config import DataConfig
from pixbench.data import shards, stream
from pixbench.data.prepare import prepare

real = stream.decode_file
stream.decode_file = lambda job, draft=None: (time.sleep(0.05), real(job, draft))[1]
stream.CHUNK_BYTES = 1  # 16-image chunks: work for both workers
root, out, how = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
cfg = DataConfig(source="imagefolder", image_size=8, root=str(root), allow_download=False,
                 skip_corrupt=False, channels="auto", fast_decode=None)
if how == "local":
    prepare(cfg, out, None, workers=2)
else:  # what an array task runs
    shards.ShardJob(str(stream.make_plan(cfg, out, root)), 0, 1, 2)()
"""


def _tree(root: Path, n: int = 160) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", 16)):
        for i in range(count):
            d = root / split / f"c{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status as a dict ({} when the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(ln.split(":\t", 1) for ln in text.splitlines() if ":\t" in ln)


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is `pid`, with their start time (pid reuse check)."""
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and _status(int(p.name)).get("PPid", "").strip() == str(pid):
            try:
                out[int(p.name)] = (p / "stat").read_text().rsplit(")", 1)[1].split()[19]
            except (OSError, IndexError):
                pass
    return out


def _alive(pid: int, started: str) -> bool:
    """Still running (not gone, not a zombie waiting for PID 1 to reap it), and the same
    process (its start time unchanged)."""
    st = _status(pid)
    if not st or st.get("State", "").startswith(("Z", "X")):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == started
    except (OSError, IndexError):
        return False


def _wait(what, timeout: float, proc=None) -> None:
    end = time.monotonic() + timeout
    while not what():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the prepare ended early ({proc.returncode}): "
                                 f"{proc.stderr.read()[-2000:]}")
        assert time.monotonic() < end, f"timed out after {timeout} s"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["local", "shard"])
def test_sigkilled_prepare_leaves_no_decode_worker(tmp_path, how):
    root = _tree(tmp_path / "tree")
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(root), str(tmp_path / "c"), how],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kids: dict[int, str] = {}
    try:
        _wait(lambda: len(_children(proc.pid)) >= 2 and any(tmp_path.glob(".c.work-*/done/*")),
              60, proc)
        kids = _children(proc.pid)  # recorded before the kill: 2 workers, mid-decode
        assert len(kids) == 2, kids
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        _wait(lambda: not any(_alive(p, t) for p, t in kids.items()), 5)
    finally:
        proc.kill()
        for pid, started in kids.items():  # never leave one behind, even when failing
            if _alive(pid, started):
                os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "c").exists()  # killed, not finished: the work dir is for a resume
