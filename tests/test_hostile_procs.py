"""Processes and disks under stress (issue 27): two prepares of one spec at once, a full disk
under memory-mapped and ordinary writes, parents killed with SIGKILL/SIGTERM while their
workers run, and cluster profiles that are wrong. Real processes, real signals, a real tmpfs
where this machine lets us mount one (root); the rest emulate the failing call."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from glob import glob
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_params
from hostile import assert_refused, run_cli
from pixbench import launch
from pixbench.config import Paths, load_params
from pixbench.config.pipeline import make_prepare_spec
from pixbench.data import stream
from pixbench.data.cache import FILES, verify_cache
from pixbench.data.prepare import prepare

PIXBENCH = str(Path(sys.executable).parent / "pixbench")  # the installed CLI, as a user runs it
CLASSIFY = ["classify", "run", "--patch", "4", "--device", "cpu"]


# ------------------------------------------------------------------------------------ helpers


def descendants(pid: int) -> set[int]:
    """Every process below `pid` now (children of each of its threads, recursively)."""
    out, todo = set(), [pid]
    while todo:
        for f in glob(f"/proc/{todo.pop()}/task/*/children"):
            with contextlib.suppress(OSError):
                for kid in map(int, Path(f).read_text().split()):
                    if kid not in out:
                        out.add(kid)
                        todo.append(kid)
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def wait_until(cond, timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process ended first (exit {proc.returncode})")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def assert_die_with_parent(proc: subprocess.Popen, kids: set[int], signum: int) -> None:
    """Kill `proc` with `signum`; every one of `kids` must be gone within a few seconds (on
    failure the survivors, all ours, are killed by pid so nothing outlives the test)."""
    assert kids, "no child processes to watch"
    proc.send_signal(signum)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = sorted(k for k in kids if alive(k))
    for k in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(k, signal.SIGKILL)
    assert not left, f"still alive 10 s after {signal.Signals(signum).name} of the parent: " \
        + "; ".join(Path(f"/proc/{k}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
                    for k in left if Path(f"/proc/{k}/cmdline").exists())


def folder_project(workdir: Path, tiny_params: dict, per_class: int = 3) -> Path:
    """An ImageFolder of gray PNGs (channels auto -> 1) and a params.yaml reading it."""
    root = workdir / "tree"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 255, (12, 10), dtype=np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i}.png")
    tiny_params["profiles"]["tiny"]["data"].update(source="imagefolder", root=str(root))
    return write_params(workdir / "params.yaml", tiny_params)


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([PIXBENCH, *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            text=True, **kw)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of `size` at `path`; skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def leave_free(mount: Path, nbytes: int) -> None:
    """Fill the filesystem at `mount` until only `nbytes` are free."""
    filler = mount / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(mount)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize - nbytes)
    finally:
        os.close(fd)


# --------------------------------------------------------------------- (a) the prepare lock


def _hold_lock(path: Path) -> int:
    """What a running prepare of this spec holds: the flock on the lock file beside its cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def test_prepare_waits_for_the_holder_of_its_spec_and_names_it(workdir, tiny_params):
    folder_project(workdir, tiny_params)
    fd = _hold_lock(workdir / "data" / ".tiny.lock")
    err = workdir / "err.txt"
    with open(err, "w") as errf:
        proc = cli("data", "prepare", "--workers", "1", stdout=subprocess.PIPE, stderr=errf)
    try:
        wait_until(lambda: f"pid {os.getpid()}" in err.read_text(), 60,
                   "a note naming the holder", proc)
        time.sleep(0.5)
        assert proc.poll() is None and not (workdir / "data" / "tiny").exists()
    finally:
        os.close(fd)  # the holder ends: the waiting prepare goes on
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.read_text()
    note = [ln for ln in err.read_text().splitlines() if ln.strip()]
    assert len(note) == 1 and note[0].startswith("note: ") and "waiting" in note[0], note
    assert json.loads(out)["channels"] == 1
    verify_cache(workdir / "data" / "tiny")
    assert sorted(p.name for p in (workdir / "data").iterdir()) == ["tiny"]  # lock file gone


def test_a_prepare_that_waited_reuses_the_cache_its_holder_made(workdir, tiny_params):
    params = folder_project(workdir, tiny_params)
    fd = _hold_lock(workdir / "data" / ".tiny.lock")
    err = workdir / "err.txt"
    with open(err, "w") as errf:
        proc = cli("data", "prepare", "--workers", "1", stdout=subprocess.PIPE, stderr=errf)
    try:
        wait_until(lambda: "waiting" in err.read_text(), 60, "the waiting note", proc)
        spec = make_prepare_spec(load_params(params), gen=False)  # the holder's prepare
        out_dir = Paths().cache_for("tiny")
        work = stream.make_plan(spec.data, out_dir, Path(spec.data.root))
        stream.decode_chunks(work, workers=1)
        stream.finish(work)
        made = (out_dir / "manifest.json").stat().st_ino
    finally:
        os.close(fd)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.read_text()
    assert (out_dir / "manifest.json").stat().st_ino == made  # used as it is, not redone
    assert json.loads(out)["counts"] == {"train": 6, "val": 6}


def test_two_prepares_at_once_give_the_cache_of_one(workdir, tiny_params, tmp_path):
    params = folder_project(workdir, tiny_params, per_class=40)
    ref = tmp_path / "ref" / "tiny"
    prepare(make_prepare_spec(load_params(params), gen=False).data, ref, None, workers=1)
    procs = [cli("data", "prepare", "--workers", "1", stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    for name in [*FILES, "manifest.json"]:
        assert (workdir / "data" / "tiny" / name).read_bytes() == (ref / name).read_bytes(), name
    assert sorted(p.name for p in (workdir / "data").iterdir()) == ["tiny"]


# -------------------------------------------------------------------------- (b) a full disk


def _train_tokenizer(gen_project, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["vq", "train", "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err


def _no_latents_left(runs: Path) -> None:
    latents = [p for p in runs.rglob("*") if p.name.endswith(("_latents.npy", "_codes.npy"))
               or p.name == ".encode-tmp"]
    assert not latents, f"half-written latents left: {latents}"


def test_vq_encode_on_a_full_disk_is_one_line_and_leaves_no_latents(gen_project, monkeypatch,
                                                                    capsys):
    """Emulated first (os.posix_fallocate answers ENOSPC): one line naming the latents file,
    nothing written. Then a real full tmpfs, where the old memory-mapped write died of SIGBUS
    (exit -7) and left the latents half-written."""
    _train_tokenizer(gen_project, monkeypatch, capsys)
    runs = gen_project.parent / "runs"

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(os, "posix_fallocate", full)
        code, _, err = run_cli(["vq", "encode", "--device", "cpu"], monkeypatch, capsys)
    lines = err.strip().splitlines()  # (diffusers may warn about `accelerate` first)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert [ln for ln in lines if ln.startswith("error")] == lines[-1:], lines
    assert "_latents.npy" in lines[-1] and "No space left on device" in lines[-1], lines
    _no_latents_left(runs)
    shutil.rmtree(runs / "tiny" / "vq-s0-latents")  # the next encode starts from nothing
    with tmpfs(gen_project.parent / "small", "8m") as small:
        shutil.copytree(runs, small / "runs", ignore=shutil.ignore_patterns("ckpt"))
        monkeypatch.setenv("PIXBENCH_RUNS_DIR", str(small / "runs"))
        leave_free(small, 32 << 10)  # the run dir's files and the .npy headers fit (the old
        # memory-mapped encode died of SIGBUS here), the latents do not
        r = subprocess.run([PIXBENCH, "vq", "encode", "--device", "cpu"], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, f"exit {r.returncode}: {r.stderr[-2000:]}"
        assert "No space left on device" in lines[-1], r.stderr[-2000:]
        assert lines[-1].startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-2000:]
        _no_latents_left(small / "runs")


def test_preallocation_without_fallocate_writes_every_block(tmp_path, monkeypatch):
    """A filesystem without fallocate (EOPNOTSUPP): zeros are written instead, so the file is
    no sparse file a later write could find without blocks; rows go in without a map."""
    from pixbench.data import npyfile

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    monkeypatch.setattr(npyfile, "ZEROS", 1000)  # several zero writes, the last one short
    path = tmp_path / "a.npy"
    offset = npyfile.create(path, np.float32, (7, 3, 5))
    assert path.stat().st_blocks * 512 >= 7 * 3 * 5 * 4  # allocated, not sparse
    rows = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    npyfile.write_rows(path, offset, 4, rows, sync=True)
    got = np.load(path)
    assert got.shape == (7, 3, 5) and np.array_equal(got[4:6], rows) and not got[:4].any()


@pytest.mark.parametrize("free_kib", [8, 12, 16, 20, 64])
def test_classify_run_on_a_full_disk_is_one_line(tiny_project, monkeypatch, capsys, free_kib):
    """Whatever write finds the disk full (run files, dvclive's logs, the checkpoint)."""
    with tmpfs(tiny_project.parent / "small", "1m") as small:
        monkeypatch.setenv("PIXBENCH_RUNS_DIR", str(small / "runs"))
        leave_free(small, free_kib << 10)
        code, _, err = run_cli(CLASSIFY, monkeypatch, capsys)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert code == 2 and "Traceback" not in err, err[-3000:]
        assert lines[-1].startswith("error: ") and "No space left on device" in lines[-1], lines
        assert all(not ln.startswith(("error", "Exception")) for ln in lines[:-1]), lines


# ------------------------------------------------------------------------------ (c) orphans


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_killed_prepare_takes_its_decode_workers_along(workdir, tiny_params, signum):
    """A decode worker stuck opening a FIFO (a file that never finishes reading) and an idle
    one: both must end with the killed `pixbench data prepare`."""
    folder_project(workdir, tiny_params)
    os.mkfifo(workdir / "fifo")
    os.symlink(workdir / "fifo", workdir / "tree" / "train" / "a" / "zz.png")
    proc = cli("data", "prepare", "--workers", "2", stdout=subprocess.DEVNULL,
               stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len(descendants(proc.pid)) >= 2, 60, "2 decode workers", proc)
        time.sleep(0.5)  # the plan is made and the chunks are handed out
        kids = descendants(proc.pid)
    except BaseException:
        proc.kill()
        raise
    assert_die_with_parent(proc, kids, signum)


STUDY_SCRIPT = '''
"""`study run`'s local pool (study/local.py run_cells) running cells that act as training
runs do on SIGTERM: record it, checkpoint, raise Interrupted."""
import sys, time
from pathlib import Path
from types import SimpleNamespace

from pixbench import launch
from pixbench.config import Paths
from pixbench.study import local


class Job:
    def __init__(self, task, spec, paths, stale, device, progress=False):
        self.task = task

    def __call__(self):
        from pixbench.tasks.signals import STOP, Interrupted

        STOP.arm(self)
        print("running", flush=True)
        while STOP.received is None:
            time.sleep(0.05)
        STOP.disarm(self, deliver=False)
        raise Interrupted("checkpointed at step 1", 15)


if __name__ == "__main__":
    launch.TaskJob = Job
    spec = lambda name: SimpleNamespace(profile="tiny", run_id=name, canonical=lambda: {})
    cells = [SimpleNamespace(name=n, task="classify", spec=spec(n), parents=[], done=False,
                             stale="error", device="cpu", run_id=n) for n in ("c1", "c2")]
    local.run_cells(cells, jobs=2, threads=1, folder=Path(sys.argv[1]), paths=Paths())
'''


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_killed_study_run_takes_its_workers_and_resource_tracker_along(workdir):
    script = workdir / "study_pool.py"
    script.write_text(STUDY_SCRIPT)
    logs = workdir / "logs"
    proc = subprocess.Popen([sys.executable, str(script), str(logs)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_until(lambda: all("running" in _read(logs / f"{c}.log") for c in ("c1", "c2")),
                   180, "both cells running", proc)
        kids = descendants(proc.pid)
    except BaseException:
        proc.kill()
        raise
    assert len(kids) >= 3  # 2 spawn workers and multiprocessing's resource tracker
    assert_die_with_parent(proc, kids, signal.SIGKILL)


# ----------------------------------------------------------------- (d) cluster profiles


@pytest.mark.parametrize("yaml_text,flags,env,names", [
    (None, ["--launcher", "local", "--cluster", "nope"], {}, "nope.yaml"),
    ("partition: gpu\ngpus: 8\n", ["--launcher", "local", "--cluster", "c"], {}, "gpus"),
    ("partition: [gpu\n", ["--launcher", "local", "--cluster", "c"], {}, "c.yaml"),
    ("- partition\n", ["--launcher", "local", "--cluster", "c"], {}, "c.yaml"),
    (b"partition: \xff\n", ["--launcher", "local", "--cluster", "c"], {}, "c.yaml"),
    (None, ["--launcher", "local"], {"PIXBENCH_CLUSTER": "nope"}, "PIXBENCH_CLUSTER"),
    ("partition: gpu\nqueue: x\n", [], {"PIXBENCH_CLUSTER": "c"}, "queue"),
], ids=["unknown-name", "unknown-key", "broken-yaml", "not-a-mapping", "not-utf8",
        "unknown-env", "env-unknown-key"])
def test_cluster_profile_misconfiguration_is_refused(tiny_project, monkeypatch, capsys,
                                                     yaml_text, flags, env, names):
    clusters = tiny_project.parent / "clusters"
    clusters.mkdir()
    if yaml_text is not None:
        data = yaml_text if isinstance(yaml_text, bytes) else yaml_text.encode()
        (clusters / "c.yaml").write_bytes(data)
    monkeypatch.setenv("PIXBENCH_CLUSTER_DIR", str(clusters))
    monkeypatch.setattr(launch.shutil, "which", lambda _: "/usr/bin/sbatch")  # SLURM "here"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    line = assert_refused([*CLASSIFY, *flags], names, tiny_project.parent, monkeypatch, capsys)
    assert line.startswith("error: ")


def test_a_finished_cell_with_an_unknown_cluster_is_refused(tiny_project, monkeypatch, capsys):
    """A finished cell is re-published here instead of being submitted: the cluster it names
    must still exist (it used to be ignored without a word)."""
    code, _, err = run_cli(CLASSIFY, monkeypatch, capsys)
    assert code == 0, err
    monkeypatch.setattr(launch.shutil, "which", lambda _: "/usr/bin/sbatch")
    monkeypatch.setenv("PIXBENCH_CLUSTER", "nope")
    assert_refused(CLASSIFY, "nope", tiny_project.parent, monkeypatch, capsys)
