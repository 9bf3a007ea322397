"""`pixbench study run`: the pipeline's pending cells on this machine, several at a time (each
after its parents, in workers that import torch once), then recorded by `dvc repro`; a failed
cell stops only its descendants; a cell's weights do not depend on the worker that ran it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from studyrepo import make_study_repo, plant_bad_checkpoint, study_params

from pixbench.study.dag import Cell
from pixbench.study.local import DEFAULT_COST_S, cell_costs, chain_lengths

VENV_BIN = str(Path(sys.executable).parent)


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXBENCH_")}
    return {**env, "PATH": f"{VENV_BIN}:{env.get('PATH', '')}", **extra}


def _pixbench(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixbench.cli", *args], cwd=repo,
                          env=_env(**env), capture_output=True, text=True, timeout=600)


def _cell(name: str, parents=(), run_id: str | None = None) -> Cell:
    spec = SimpleNamespace(profile="p", run_id=run_id or name)
    return Cell(name, name, "classify", spec, parents=list(parents))


def test_the_longest_chain_goes_first():
    # prepare -> vq -> dit (long chain) beside a long but lone classify cell
    cells = [_cell("prepare"), _cell("vq", ["prepare"]), _cell("dit", ["vq"]),
             _cell("classify", ["prepare"])]
    costs = {"prepare": 1, "vq": 50, "dit": 40, "classify": 80}
    length = chain_lengths(cells, costs)
    assert length == {"prepare": 91, "vq": 90, "dit": 40, "classify": 80}
    assert length["vq"] > length["classify"]  # the chain starts before the longer lone cell


def test_costs_are_the_last_recorded_wall_times(tmp_path):
    metrics = tmp_path / "metrics" / "p"
    metrics.mkdir(parents=True)
    (metrics / "a.json").write_text('{"wall_s": 12.5}')
    (metrics / "b.json").write_text('{"top1": 3}')
    (metrics / "c.json").write_text("not json")
    costs = cell_costs([_cell(n) for n in "abcd"], SimpleNamespace(reports_dir=tmp_path))
    assert costs == {"a": 12.5, "b": DEFAULT_COST_S, "c": DEFAULT_COST_S, "d": DEFAULT_COST_S}


def _assert_same_as_run_alone(repo: Path, tmp_path: Path, *, patch: int) -> None:
    """The study's classification cell (seed 0) has the weights of the same cell run alone with
    one thread: classify's run(spec, paths), the entry point `pixbench classify run --size xxs
    --patch P --seed 0` calls, here in the test's process (one intra-op thread, the reduction
    order of OMP_NUM_THREADS=1; a CLI process would only add ~6 s of imports)."""
    from pixbench.config import Paths, load_params, make_classify_spec
    from pixbench.tasks.classify import run as classify

    spec = make_classify_spec(load_params(repo / "params.yaml"), size="xxs", patch=patch, seed=0)
    paths = Paths(cache_dir=repo / "data", runs_dir=tmp_path / "alone",
                  reports_dir=tmp_path / "alone-reports", logs_dir=tmp_path / "alone-logs",
                  instruments_dir=repo / "instruments", data_root=None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        classify.run(spec, paths, progress=False)
    finally:
        torch.set_num_threads(threads)
    ours, theirs = (torch.load(root / "tiny" / f"classify-xxs-p{patch}-s0" / "ckpt" / "last.pt",
                               weights_only=True)["modules"]["model"]
                    for root in (repo / "runs", tmp_path / "alone"))
    assert spec.run_id == f"classify-xxs-p{patch}-s0"
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines()]


def _study_logs(repo: Path) -> set[Path]:
    """Each `study run`'s log folder."""
    return set((repo / "logs" / "studies").iterdir())


def test_a_failed_cell_stops_only_its_descendants_then_a_rerun_finishes_in_dag_order_and_records(
        tmp_path):
    """One repo for what were two tests building the same one (test_study_runs_here_in_dag_order_
    and_is_recorded, test_a_failed_cell_stops_only_its_descendants; each prepared the data and
    ran the p4 chain): a study run with a broken mae-pretrain@2 checkpoint fails that cell and its
    linear probe only; once the broken run dir is gone, a second run does just those two, in DAG
    order, and records everything; the classify cell has the weights of the cell run alone; a
    third run finds nothing to do."""
    repo = make_study_repo(tmp_path / "repo", study_params(patches=(4,), mae_patches=(2, 4)))
    bad = plant_bad_checkpoint(repo, "pixbench mae pretrain --size xxs --patch 2 --seed 0 "
                                     "--stale restart")
    targets = ("study", "run", "classify", "mae-linprobe", "--jobs", "2", "--threads", "1")
    out = _pixbench(repo, *targets)
    assert out.returncode == 2, out.stdout + out.stderr[-3000:]
    lines = _lines(out.stderr)
    assert "2 at a time, 1 thread(s) each" in out.stderr
    (first,) = _study_logs(repo)
    log = first / f"{bad}.log"
    assert any(s.startswith("FAILED mae-pretrain@tiny-xxs-p2-s0") and str(log) in s for s in lines)
    assert "unreadable checkpoint" in log.read_text()
    for cell in ("classify@tiny-xxs-p4-s0", "mae-pretrain@tiny-xxs-p4-s0", "mae-linprobe@tiny-xxs-p4-s0"):
        assert any(s.startswith(f"done   {cell}") for s in lines), (cell, lines)
    assert "start  mae-linprobe@tiny-xxs-p2-s0" not in lines
    assert lines[-1].startswith("error: 2 cells failed or wait for a failed one "
                                "(mae-linprobe@tiny-xxs-p2-s0, mae-pretrain@tiny-xxs-p2-s0)"), lines[-1]
    assert "classify" not in (repo / "dvc.lock").read_text()  # nothing recorded but prepare
    # a linear probe starts only after its pre-training has finished (p4 here, p2 below)
    done = next(i for i, s in enumerate(lines) if s.startswith("done   mae-pretrain@tiny-xxs-p4-s0"))
    assert lines.index("start  mae-linprobe@tiny-xxs-p4-s0") > done
    assert {p.name for p in first.iterdir()} == {
        "classify-xxs-p4-s0.log", "mae-pretrain-xxs-p2-s0.log", "mae-pretrain-xxs-p4-s0.log",
        "mae-linprobe-xxs-p4-s0.log"}  # prepare went through dvc repro first

    shutil.rmtree(repo / "runs" / "tiny" / bad)  # the broken checkpoint gone: the cell pends
    out = _pixbench(repo, *targets)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    lines = _lines(out.stderr)
    assert "6 cells, 4 finished already; 2 at a time, 1 thread(s) each" in out.stderr
    done = next(i for i, s in enumerate(lines) if s.startswith("done   mae-pretrain@tiny-xxs-p2-s0"))
    assert lines.index("start  mae-linprobe@tiny-xxs-p2-s0") > done
    (second,) = _study_logs(repo) - {first}
    assert {p.name for p in second.iterdir()} == {"mae-pretrain-xxs-p2-s0.log",
                                                  "mae-linprobe-xxs-p2-s0.log"}
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "classify", "mae-linprobe"],
                            cwd=repo, env=_env(), capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout + status.stderr
    # the same cell run alone with one thread: bitwise the same weights
    _assert_same_as_run_alone(repo, tmp_path, patch=4)
    again = _pixbench(repo, "study", "run", "classify", "mae-linprobe")
    assert again.returncode == 0 and "6 cells, 6 finished already" in again.stderr, again.stderr
    assert "start " not in again.stderr and "Running stage" not in again.stdout


def test_sigterm_checkpoints_the_running_cells_and_a_rerun_ends_bitwise_equal(tmp_path):
    """A preempted `study run` (SIGTERM): its running cell checkpoints and the command exits
    143; run again, the cell resumes and ends with the weights of an uninterrupted run."""
    import signal
    import time

    # 16 epochs (128 steps; the SIGTERM lands by step ~3): long enough to stop mid-run, and the
    # rerun and the run alone train no more than that (40 epochs cost ~6 s more of CPU)
    params = study_params(patches=(2,), classify={"epochs": 16, "checkpoint_every_s": 0.2})
    repo = make_study_repo(tmp_path / "repo", params)
    args = [sys.executable, "-m", "pixbench.cli", "study", "run", "classify", "--threads", "1"]
    proc = subprocess.Popen(args, cwd=repo, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    run_dir = repo / "runs" / "tiny" / "classify-xxs-p2-s0"
    deadline = time.monotonic() + 300
    while not (run_dir / "ckpt" / "last.pt").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "error: study run stopped by SIGTERM" in err
    assert not (run_dir / "metrics.json").exists()  # stopped mid-run, checkpoint kept
    (log,) = (repo / "logs" / "studies").glob("*/classify-xxs-p2-s0.log")
    assert "checkpointed at step" in log.read_text(), log.read_text()[-2000:]
    step = torch.load(run_dir / "ckpt" / "last.pt", weights_only=True)["state"]["global_step"]
    assert 0 < step < 16 * 8
    again = subprocess.run(args, cwd=repo, env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_same_as_run_alone(repo, tmp_path, patch=2)


def test_a_long_cell_shows_its_latest_progress_line(tmp_path):
    """`study run` / `sweep` print a running cell's last progress line (step, ETA) from its log
    at least every PROGRESS_EVERY_S, so a 10-minute cell is never silent."""
    from pixbench.study.local import last_progress

    log = tmp_path / "cell.log"
    assert last_progress(log) is None
    log.write_text("loading\n" + "x" * 5000 + "\nclassify-xxs-p1-s0 step 40/120 | 33% elapsed 30s "
                   "eta 40s\nstep 80/120 | 67% elapsed 60s eta 20s\nwarning: slow disk\n")
    assert last_progress(log) == "step 80/120 | 67% elapsed 60s eta 20s"
