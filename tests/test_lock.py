"""One process per run dir (the lock), no trainer outliving its parent, and deletions only
inside the runs dir: real processes and real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostile import assert_refused, run_cli
from pixbench.config import Paths, load_params, make_classify_spec
from pixbench.errors import UserError
from pixbench.runio import CKPT_NAME
from pixbench.tasks.rundir import RunLock, remove_run_dir
from test_faults import STOPPED, ckpt_step, edit_params

HOLD = ("import sys, time; from pathlib import Path; from pixbench.tasks.rundir import RunLock; "
        "RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(600)")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (FileNotFoundError, IndexError):
        return True


def test_dead_holder_never_blocks_and_a_live_one_is_named(tmp_path):
    run_dir = tmp_path / "runs" / "tiny" / "classify-xxs-p2-s0"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as exc:
            RunLock(run_dir).acquire()
        msg = str(exc.value)
        assert str(run_dir) in msg and f"pid {holder.pid} " in msg and "\n" not in msg, msg
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(run_dir)  # the kernel dropped the dead holder's flock: nothing stale
    lock.acquire()
    lock.release()


def test_second_process_is_refused_and_the_first_dies_with_its_parent(tiny_project, tmp_path,
                                                                       monkeypatch, capsys):
    """A `pixbench classify run` under a shell holds the cell; the same command again is
    refused with one line naming the run dir and the holder's pid; SIGKILL on the shell (as on
    a killed `dvc repro`) makes the orphan checkpoint at its next step and exit."""
    edit_params(tiny_project, ["classify"], epochs=400, checkpoint_every_s=0.5)
    run_dir = Paths().run_dir("tiny", "classify-xxs-p2-s0")
    log = tmp_path / "first.err"
    cmd = f"{sys.executable} -m pixbench.cli classify run --patch 2; echo shell-survived"
    with open(log, "w") as err:
        shell = subprocess.Popen(["bash", "-c", cmd], stdout=subprocess.DEVNULL, stderr=err,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while ckpt_step(run_dir / CKPT_NAME) is None:
        assert time.monotonic() < deadline and shell.poll() is None, log.read_text()
        time.sleep(0.05)
    pid = int((run_dir.parent / f".{run_dir.name}.lock").read_text().split()[1])
    assert pid != shell.pid and not _gone(pid)

    code, _, err = run_cli(["classify", "run", "--patch", "2"], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"{run_dir} is in use by pid {pid} " in lines[0], lines[0]

    shell.send_signal(signal.SIGKILL)
    shell.wait()
    t0 = time.monotonic()
    while not _gone(pid):
        assert time.monotonic() - t0 < 60, "the orphaned pixbench kept running"
        time.sleep(0.05)
    match = STOPPED.match(log.read_text().strip().splitlines()[-1])
    assert match, log.read_text()[-500:]
    assert ckpt_step(run_dir / CKPT_NAME) == int(match[2])
    print(f"parent SIGKILLed -> child checkpointed at step {match[2]} and exited in "
          f"{time.monotonic() - t0:.2f} s")
    lock = RunLock(run_dir)
    lock.acquire()
    lock.release()


def test_lock_and_handlers_are_released_however_the_run_ends(tiny_project, monkeypatch):
    """In one process: a run that raises (here a KeyboardInterrupt after a checkpoint) leaves
    the lock free and SIGTERM's handler as it found it; the next run resumes and finishes."""
    from pixbench.tasks.classify import run as classify
    from pixbench.tasks.runner import Run

    spec = make_classify_spec(load_params(tiny_project), size=None, patch=4, seed=0)
    before = signal.getsignal(signal.SIGTERM)
    real = Run.tick

    def tick(self, state):
        if state.global_step == 3:
            self.save(state)
            raise KeyboardInterrupt
        real(self, state)

    with monkeypatch.context() as m:
        m.setattr(Run, "tick", tick)
        with pytest.raises(KeyboardInterrupt):
            classify.run(spec, Paths(), progress=False)
    assert signal.getsignal(signal.SIGTERM) is before
    run_dir = Paths().run_dir("tiny", spec.run_id)
    lock = RunLock(run_dir)
    lock.acquire()
    lock.release()
    assert classify.run(spec, Paths(), progress=False)["steps"] == 16
    assert signal.getsignal(signal.SIGTERM) is before


# ------------------------------------------------------------------------------- paths


def _other_spec_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "spec.json").write_text(json.dumps({"digest": "0" * 16, "spec": {}}))
    (path / "keep.txt").write_text("precious")
    return path


def test_stale_restart_never_deletes_through_a_symlinked_run_dir(tiny_project, monkeypatch,
                                                                  capsys):
    """A run dir that is a symlink (here to another dir inside the runs dir, which the path
    check lets through) is never deleted: one line, nothing changed."""
    precious = _other_spec_dir(Paths().runs_dir / "tiny" / "precious")
    run_dir = Paths().run_dir("tiny", "classify-xxs-p4-s0")
    run_dir.symlink_to(precious.resolve())
    line = assert_refused(["classify", "run", "--patch", "4", "--stale", "restart"],
                          str(run_dir), tiny_project.parent, monkeypatch, capsys)
    assert "refusing to delete" in line and "symbolic link" in line
    assert (precious / "keep.txt").read_text() == "precious"


def test_stale_restart_never_deletes_outside_the_runs_dir(tiny_project, monkeypatch, capsys):
    outside = tiny_project.parent / "elsewhere"
    _other_spec_dir(outside / "classify-xxs-p4-s0")
    runs = Paths().runs_dir
    runs.mkdir(parents=True)
    (runs / "tiny").symlink_to(outside)  # the profile dir points outside the runs dir
    assert_refused(["classify", "run", "--patch", "4", "--stale", "restart"], "outside",
                   tiny_project.parent, monkeypatch, capsys)
    assert (outside / "classify-xxs-p4-s0" / "keep.txt").exists()


def test_remove_run_dir_only_inside_the_runs_dir(tmp_path):
    """The deletion's own check (the run dir may change between the spec check and the
    deletion): outside, the root itself and symlinks are refused with one line."""
    root = tmp_path / "runs"
    (root / "tiny" / "a").mkdir(parents=True)
    for bad in (root, root / ".." / "x", tmp_path, Path("/")):
        with pytest.raises(UserError, match="outside|runs dir .* itself") as exc:
            remove_run_dir(bad, root, dry=True)
        assert "\n" not in str(exc.value)
    (root / "tiny" / "link").symlink_to(root / "tiny" / "a")
    with pytest.raises(UserError, match="symbolic link"):
        remove_run_dir(root / "tiny" / "link", root)
    remove_run_dir(root / "tiny" / "a", root)
    assert not (root / "tiny" / "a").exists() and tmp_path.exists()
