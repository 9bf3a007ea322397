"""`pixbench study` against a real SLURM (slurm/local-cluster/start.sh; CI starts it): a study
runs in DAG order and is recorded, so `dvc repro` submits nothing and `dvc status` is clean; a
failed cell cancels only its dependants; a requeued cell completes. Skipped where no SLURM
answers. The whole-pipeline study (every track, 25 cells: report and verify run in the record job) is `slow`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from studyrepo import make_study_repo, plant_bad_checkpoint, study_params
from test_slurm import REASON, STATE

pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
VENV_BIN = str(Path(sys.executable).parent)


def _env(repo: Path) -> dict:
    """The login shell of a user in the repo: machine paths relative to it, the cluster named,
    `pixbench` and `dvc` on PATH (the record job's `dvc repro` runs stage commands)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXBENCH_")}
    env.update(PIXBENCH_CLUSTER="local", PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
               OMP_NUM_THREADS="1", SLURM_CONF=os.environ.get(
                   "SLURM_CONF", str(STATE / "etc" / "slurm.conf")))
    return env


def _pixbench(repo: Path, *args: str, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixbench.cli", *args], cwd=repo, env=_env(repo),
                          capture_output=True, text=True, timeout=timeout, **kw)


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=_env(repo),
                          capture_output=True, text=True, timeout=600)


def _state(repo: Path) -> dict:
    (state,) = (repo / "logs" / "studies").glob("*/study.json")
    return json.loads(state.read_text())


def _sacct(job_ids: list[str], *extra: str) -> dict[str, list[str]]:
    bases = ",".join(sorted({j.split("_")[0] for j in job_ids}))
    out = subprocess.run(["sacct", "-X", "-n", "-P", *extra, "-j", bases, "-o",
                          "JobID,State,Start,End"], capture_output=True, text=True, check=True,
                         env=_env(Path.cwd())).stdout
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        jid, state, start, end = line.split("|")
        rows.setdefault(jid, []).append(state)
        rows[jid] += [start, end]
    return rows


def _assert_dag_order(state: dict) -> dict:
    """No job started before every parent's job ended (sacct times, 1 s resolution)."""
    cells = {c["name"]: c for c in state["cells"]}
    acct = _sacct([c["job_id"] for c in cells.values() if c["job_id"]])
    for cell in cells.values():
        if not cell["job_id"]:
            continue
        start = acct[cell["job_id"]][1]
        for parent in cell["parents"]:
            pjob = cells[parent]["job_id"]
            if pjob and pjob != cell["job_id"]:
                assert acct[pjob][0] == "COMPLETED", (parent, acct[pjob])
                assert start >= acct[pjob][2], f"{cell['name']} started {start}, before " \
                    f"{parent} ended {acct[pjob][2]}"
    return acct


def _assert_recorded(repo: Path, *targets: str, whole: bool = False) -> None:
    """`dvc repro --force` of every cell but the report (each stage command runs again, through
    launch() with the cluster set) submits nothing: no submitit folder appears; then `dvc
    status` is clean. (The report has no finished state: it is rebuilt wherever it runs.)"""
    out = _dvc(repo, "repro", "--force", *targets)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Running stage 'classify" in out.stdout, out.stdout
    assert not (repo / "logs" / "submitit").exists(), "dvc repro submitted a job"
    status = _dvc(repo, "status", *(() if whole else targets))
    assert "up to date" in status.stdout, status.stdout + status.stderr


ALL_BUT_REPORT = ("classify", "locality", "mae-finetune", "mae-linprobe", "mae-scratch",
                  "mae-pretrain-alt", "vq-eval", "dit-eval")


def test_small_study_runs_in_dag_order_and_is_recorded(tmp_path):
    repo = make_study_repo(tmp_path / "repo", study_params(patches=(4,), mae_patches=(2, 4)))
    t0 = time.perf_counter()
    out = _pixbench(repo, "study", "submit", "classify", "mae-linprobe", "--poll", "1")
    print(f"small study (7 cells + record): {time.perf_counter() - t0:.0f} s")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "6 cells, 0 reused, 7 jobs submitted" in out.stdout, out.stdout
    state = _state(repo)
    acct = _assert_dag_order(state)
    cells = {c["name"]: c for c in state["cells"]}
    arrays = {cells[f"mae-pretrain@tiny-xxs-p{p}-s0"]["job_id"].split("_")[0] for p in (2, 4)}
    assert len(arrays) == 1 and "_" in cells["mae-pretrain@tiny-xxs-p2-s0"]["job_id"]  # one array
    record = next(c for c in state["cells"] if c["name"] == "record")
    assert acct[record["job_id"]][0] == "COMPLETED"
    assert "every cell is done and recorded" in out.stderr
    _assert_recorded(repo, "classify", "mae-linprobe")
    again = _pixbench(repo, "study", "submit", "classify", "mae-linprobe")
    assert "nothing to submit" in again.stdout, again.stdout + again.stderr


def test_failed_cell_cancels_only_its_dependants(tmp_path, monkeypatch):
    for var in [v for v in os.environ if v.startswith("PIXBENCH_")]:
        monkeypatch.delenv(var)
    repo = make_study_repo(tmp_path / "repo", study_params(patches=(4,), mae_patches=(2,)))
    bad = plant_bad_checkpoint(repo, "pixbench mae pretrain --size xxs --patch 2 --seed 0 "
                                      "--stale restart")
    out = _pixbench(repo, "study", "submit", "classify", "mae-linprobe", "--poll", "1")
    assert out.returncode == 2, out.stdout + out.stderr[-3000:]
    states = {c["name"]: c for c in _state(repo)["cells"]}
    acct = _sacct([c["job_id"] for c in states.values() if c["job_id"]])
    got = {n: acct[c["job_id"]][0].split()[0] for n, c in states.items() if c["job_id"]}
    assert got == {"prepare@tiny": "COMPLETED", "classify@tiny-xxs-p4-s0": "COMPLETED",
                   "mae-pretrain@tiny-xxs-p2-s0": "FAILED", "mae-linprobe@tiny-xxs-p2-s0": "CANCELLED",
                   "record": "CANCELLED"}, got
    failed = states["mae-pretrain@tiny-xxs-p2-s0"]
    err = out.stderr
    assert f"FAILED mae-pretrain@tiny-xxs-p2-s0 (mae-pretrain {bad}): job {failed['job_id']}" in err
    assert failed["log"] in err and "unreadable checkpoint" in err, err[-3000:]
    assert "cancelled (a parent failed): mae-linprobe@tiny-xxs-p2-s0, record" in err
    assert "3 of 5 cells failed or were cancelled" in err


@pytest.mark.slow
def test_requeued_cell_completes_mid_study(tmp_path):
    params = study_params(patches=(2,), classify={"epochs": 40, "checkpoint_every_s": 0.2})
    repo = make_study_repo(tmp_path / "repo", params)
    proc = subprocess.Popen([sys.executable, "-m", "pixbench.cli", "study", "submit", "classify",
                             "--poll", "1"], cwd=repo, env=_env(repo), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpt = repo / "runs" / "tiny" / "classify-xxs-p2-s0" / "ckpt" / "last.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the cell never checkpointed"
        time.sleep(0.5)
    job = next(c for c in _state(repo)["cells"] if c["name"] == "classify@tiny-xxs-p2-s0")["job_id"]
    subprocess.run(["scontrol", "requeue", job], check=True, env=_env(repo))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout + stderr[-3000:]
    history = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", "State"],
                             capture_output=True, text=True, env=_env(repo)).stdout.split()
    assert "REQUEUED" in history and history[-1] == "COMPLETED", history
    _assert_dag_order(_state(repo))
    _assert_recorded(repo, "classify")


@pytest.mark.slow
def test_whole_study_every_track(tmp_path):
    repo = make_study_repo(tmp_path / "repo", study_params())
    t0 = time.perf_counter()
    out = _pixbench(repo, "study", "submit", "--poll", "2", timeout=1800)
    print(f"whole study (25 cells): {time.perf_counter() - t0:.0f} s")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "25 cells, 0 reused, 24 jobs submitted" in out.stdout, out.stdout
    _assert_dag_order(_state(repo))
    _assert_recorded(repo, *ALL_BUT_REPORT, whole=True)
    assert (repo / "reports" / "REPORT.md").is_file()
