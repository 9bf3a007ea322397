"""The loader under spawn and forkserver (issue 26): a DataLoader worker started so gets its
dataset pickled, and an np.memmap pickles every byte it maps. `Rows` travels as a reference to
its file instead, so each worker's memory is the rows it reads, whatever the cache's size;
the batches are bitwise those of the training process; and a forkserver's workers die with
the killed training process, though it is not their parent."""

from __future__ import annotations

import itertools
import os
import pickle
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from pixbench.config import AugmentConfig
from pixbench.data.loader import Rows, StepBatches, batches
from pixbench.errors import UserError

MiB = 1 << 20
CFG = AugmentConfig(hflip=True, crop_padding=1, rrc_scale_min=None, color_jitter=0.0,
                    grayscale_p=0.0)
MEAN, STD = torch.tensor([0.5, 0.45, 0.4]), torch.tensor([0.25, 0.24, 0.26])
B, STEPS = 32, 6  # a worker reads STEPS batches: 6 x 32 rows of 12 KiB


def make_cache(path: Path, n: int) -> Path:
    """A uint8 (n, 64, 64, 3) .npy (12 KiB a row) whose rows differ, written a block at a time."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 64, 64, 3))
    ramp = np.arange(64 * 64 * 3, dtype=np.int64).reshape(64, 64, 3)
    for lo in range(0, n, 1024):
        hi = min(n, lo + 1024)
        arr[lo:hi] = (ramp[None] * 7 + np.arange(lo, hi)[:, None, None, None] * 13) % 256
    arr.flush()
    del arr
    return path


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("spawn")
    return {"small": make_cache(d / "small.npy", 256),
            "large": make_cache(d / "large.npy", 16384)}  # 192 MiB


def rows_of(path: Path) -> Rows:
    arr = np.load(path, mmap_mode="r")
    return Rows(arr, np.arange(len(arr))[::-1].copy())


def dataset(rows: Rows) -> StepBatches:
    return StepBatches(rows, torch.arange(len(rows)), batch_size=B, seed=1, epoch=0,
                       first_step=0, cfg=CFG, mean=MEAN, std=STD, augment_here=True)


def test_a_memory_map_pickles_as_its_file_not_its_bytes(caches):
    rows = rows_of(caches["large"])
    blob = pickle.dumps(rows)
    assert rows.images.nbytes == 192 * MiB
    assert len(blob) < rows.rows.nbytes + 64 * 1024  # the row index, not the 192 MiB
    back = pickle.loads(blob)
    idx = np.array([5, 16000, 0, 77])
    assert np.array_equal(back.gather(idx), rows.gather(idx))


def test_a_view_of_a_map_and_a_plain_array_pickle_to_the_same_rows(caches):
    """A slice of a map starts past the map's first byte; an in-memory array goes by value."""
    arr = np.load(caches["large"], mmap_mode="r")
    for images in (arr[1000:3000], arr[4097:], np.array(arr[:50])):
        rows = Rows(images, np.arange(len(images)))
        back = pickle.loads(pickle.dumps(rows))
        idx = np.array([0, len(images) - 1, len(images) // 2])
        assert np.array_equal(back.gather(idx), np.asarray(images)[idx])


def test_a_cache_replaced_before_the_worker_maps_it_is_refused(tmp_path):
    path = make_cache(tmp_path / "c.npy", 64)
    blob = pickle.dumps(rows_of(path))
    os.replace(make_cache(tmp_path / "new.npy", 64), path)  # a prepare swapped a cache in
    with pytest.raises(UserError, match="c.npy: replaced"):
        pickle.loads(blob)


def _status(pid: int, field: str) -> int:
    """A /proc/PID/status memory field in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(text.split(field + ":")[1].split()[0]) * 1024


def _run(rows: Rows, start_method: str | None, workers: int) -> tuple[list, int]:
    """The first STEPS batches, and the most private memory (RssAnon) among this process's
    descendants while they are alive: the loader worker (a fork server or resource tracker
    holds less). Pages of the memory map itself are the node's page cache (RssFile): shared
    by every process that reads the file, counted once by the cgroup, not copies."""
    gen = batches(dataset(rows), 0, workers=workers, start_method=start_method)
    got = [(b.x.clone(), b.y.clone()) for b in itertools.islice(gen, STEPS)]
    private = 0
    for p in psutil.Process().children(recursive=True):
        try:
            private = max(private, _status(p.pid, "RssAnon"))
        except (OSError, IndexError):
            continue
    gen.close()
    return got, private


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_spawned_workers_hold_their_rows_not_the_cache(caches, start_method):
    """One worker per run, on a 256-row and a 16384-row (192 MiB) cache: the worker's private
    memory grows by far less than the cache (before: by all of it, the unpickled copy)."""
    here, _ = _run(rows_of(caches["large"]), None, 0)
    private = {}
    for name in ("small", "large"):
        got, private[name] = _run(rows_of(caches[name]), start_method, 1)
        if name == "large":  # bitwise what the training process computes itself
            assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, here))
    assert private["small"] > 50 * MiB  # the worker was measured (it imported torch)
    assert private["large"] - private["small"] < 16 * MiB, private


ORPHAN_SCRIPT = """
import sys, time, numpy as np, psutil
sys.path[:0] = [{tests!r}]
from test_loader_spawn import batches, dataset, rows_of

if __name__ == "__main__":
    gen = batches(dataset(rows_of({path!r})), 0, workers=2, start_method="forkserver")
    next(gen)
    print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
    time.sleep(600)
"""


def test_forkserver_workers_die_with_a_killed_training_process(caches, tmp_path):
    """SIGKILL of the process training: its loader workers (children of the fork server, not
    of it) go too: the fork server exits with its parent, and the workers' PDEATHSIG with it
    (procs.worker_dies_with, which must not mistake the fork server for a new parent)."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "train.py"
    script.write_text(ORPHAN_SCRIPT.format(tests=str(Path(__file__).parent),
                                           path=str(caches["small"])))
    log = (tmp_path / "stderr").open("w")  # the killed run's resource tracker warns there
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=log,
                            text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        workers = [p for p in pids if psutil.Process(p).ppid() != proc.pid]  # the server's
        assert len(workers) >= 2, pids
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20
    while (alive := [p for p in pids if psutil.pid_exists(p)
                     and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, [psutil.Process(p).cmdline() for p in alive]
