"""Against a real SLURM (slurm/local-cluster/start.sh; CI starts it): submit, arrays, requeue,
failure and cancel. Skipped with a reason where no SLURM answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pixbench import cluster, launch
from pixbench.config import Paths, load_params, make_classify_spec
from pixbench.errors import UserError
from pixbench.runio import CKPT_NAME

STATE = Path(os.environ.get("PIXBENCH_SLURM_STATE", "/tmp/pixbench-slurm"))


def _slurm_reason() -> str | None:
    if shutil.which("sbatch") is None:
        return "no SLURM client (sbatch) on PATH; run slurm/local-cluster/start.sh"
    env = dict(os.environ)
    if "SLURM_CONF" not in env and (STATE / "etc" / "slurm.conf").exists():
        env["SLURM_CONF"] = str(STATE / "etc" / "slurm.conf")
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return "scontrol ping did not answer"
    return None if "UP" in out.stdout else "no slurmctld answers scontrol ping"


REASON = _slurm_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture(autouse=True)
def slurm_env(monkeypatch):
    if "SLURM_CONF" not in os.environ:
        monkeypatch.setenv("SLURM_CONF", str(STATE / "etc" / "slurm.conf"))
    monkeypatch.setenv("PIXBENCH_CLUSTER", "local")


def _spec(params_path, patch=4, seed=0, **over):
    params = load_params(params_path)
    prof = params.active
    params = params.model_copy(update={"profiles": {params.profile: prof.model_copy(
        update={"classify": prof.classify.model_copy(update=over)})}})
    return make_classify_spec(params, size=None, patch=patch, seed=seed)


def test_submit_tiny_run_returns_metrics(tiny_project):
    spec = _spec(tiny_project)
    t0 = time.perf_counter()
    metrics = launch.launch(spec, Paths(), launcher="slurm", cluster="local")
    print(f"submit -> metrics: {time.perf_counter() - t0:.1f} s")
    assert metrics["run_id"] == "classify-xxs-p4-s0" and metrics["top1"] > 40
    manifest = json.loads((Paths().run_dir("tiny", spec.run_id) / "manifest.json").read_text())
    assert manifest["slurm_job_id"] is not None


def test_sweep_is_one_job_array(tiny_project):
    params = load_params(tiny_project)
    specs = [make_classify_spec(params, size=None, patch=p, seed=0) for p in (2, 4, 8)]
    rows = launch.sweep(specs, Paths(), launcher="slurm", cluster="local")
    assert [r["state"] for r in rows] == ["DONE"] * 3
    array_ids = {str(r["job_id"]).split("_")[0] for r in rows}
    assert len(array_ids) == 1 and all("_" in str(r["job_id"]) for r in rows)
    again = launch.sweep(specs, Paths(), launcher="slurm", cluster="local")
    assert all("job_id" not in r for r in again)  # finished cells are skipped


def _wait_for_checkpoint(path: Path, min_step: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            try:
                if torch.load(path, weights_only=True)["state"]["global_step"] >= min_step:
                    return
            except Exception:  # being replaced right now
                pass
        time.sleep(0.2)
    pytest.fail(f"no checkpoint at step >= {min_step} in {timeout_s} s")


def test_interrupted_job_requeues_and_ends_bitwise_identical(tiny_project, tmp_path, monkeypatch):
    spec = _spec(tiny_project, patch=2, epochs=25, checkpoint_every_s=0.1)  # 200 steps
    paths = Paths()
    executor = cluster.make_executor(cluster.load_cluster("local"), tmp_path / "submitit",
                                     "requeue")
    job = executor.submit(launch.TaskJob("classify", spec.canonical(), launch._abs_paths(paths)))
    ckpt = paths.run_dir(spec.profile, spec.run_id) / CKPT_NAME
    _wait_for_checkpoint(ckpt, min_step=3)
    t_int = time.perf_counter()
    job._interrupt()  # USR2: submitit calls checkpoint() and requeues the job
    while job.state not in ("PENDING", "REQUEUED", "COMPLETED") and time.perf_counter() - t_int < 60:
        time.sleep(0.2)
    step_at_interrupt = torch.load(ckpt, weights_only=True)["state"]["global_step"]
    assert step_at_interrupt < 25 * 8, "finished before the interrupt: make the job longer"
    _wait_for_checkpoint(ckpt, min_step=step_at_interrupt + 1)
    print(f"interrupt -> resumed training: {time.perf_counter() - t_int:.1f} s")
    metrics = cluster.wait_for(job, spec.run_id)
    assert metrics["steps"] == 25 * (256 // 32)
    logs = "".join(p.read_text() for p in (tmp_path / "submitit").glob("*_log.err"))
    assert "requeu" in logs.lower()

    _assert_same_as_a_local_run(spec, ckpt, tmp_path, monkeypatch)


def test_failing_job_reports_the_remote_error(tiny_project, tmp_path, capsys):
    spec = _spec(tiny_project)
    paths = Paths(cache_dir=tmp_path / "no-cache", runs_dir=tmp_path / "runs-fail",
                  logs_dir=tmp_path / "logs")
    with pytest.raises(UserError, match="failed \\(remote traceback above"):
        launch.launch(spec, paths, launcher="slurm", cluster="local")
    assert "dataset cache not found" in capsys.readouterr().err


def test_cancelled_job_ends_with_a_clear_message(tiny_project, tmp_path):
    spec = _spec(tiny_project, patch=1, epochs=500)
    executor = cluster.make_executor(cluster.load_cluster("local"), tmp_path / "submitit", "cancel")
    job = executor.submit(launch.TaskJob("classify", spec.canonical(), launch._abs_paths(Paths())))
    while job.state in ("UNKNOWN", "PENDING"):
        time.sleep(0.2)
    t0 = time.perf_counter()
    job.cancel()
    with pytest.raises(UserError, match="ended without a result"):
        cluster.wait_for(job, spec.run_id)
    print(f"cancel -> clear error: {time.perf_counter() - t0:.1f} s")


def _log_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob("*_log.err")))


def test_usr2_then_sigterm_checkpoint_at_a_step_boundary_and_end_identical(tiny_project,
                                                                            tmp_path,
                                                                            monkeypatch):
    """Periodic checkpoints never come (checkpoint_every_s=1 h): only epoch ends and signals
    save. `scancel --signal=USR2` (SLURM's time-limit warning): the runner checkpoints at the
    next step boundary, then hands over to submitit, which requeues. `scontrol requeue` (SIGTERM,
    then SIGKILL after KillWait): the runner checkpoints at the next step boundary and carries
    on until killed. The job ends bitwise equal to an uninterrupted local run."""
    import re

    spec = _spec(tiny_project, patch=2, epochs=40, checkpoint_every_s=3600.0)  # 320 steps
    paths, folder = Paths(), tmp_path / "submitit"
    executor = cluster.make_executor(cluster.load_cluster("local"), folder, "signals")
    job = executor.submit(launch.TaskJob("classify", spec.canonical(), launch._abs_paths(paths)))
    ckpt = paths.run_dir(spec.profile, spec.run_id) / CKPT_NAME
    _wait_for_checkpoint(ckpt, min_step=8)  # the end of epoch 1
    before = torch.load(ckpt, weights_only=True)["state"]["global_step"]
    subprocess.check_call(["scancel", "--signal=USR2", str(job.job_id)])
    deadline = time.monotonic() + 60
    while "DUE TO JOB REQUEUE" not in _log_text(folder):
        assert time.monotonic() < deadline, _log_text(folder)[-2000:]
        time.sleep(0.2)
    log = _log_text(folder)
    usr2 = re.search(r"SIGUSR2: checkpointed at step (\d+)", log)
    # the checkpoint is written before submitit's handler runs, which requeues
    assert usr2 and log.index(usr2[0]) < log.index("Caught signal SIGUSR2") \
        < log.index("DUE TO JOB REQUEUE"), log[-2000:]
    assert int(usr2[1]) >= before
    _wait_for_checkpoint(ckpt, min_step=int(usr2[1]) + 8)  # the requeued job trains on
    subprocess.check_call(["scontrol", "requeue", str(job.job_id)])
    deadline = time.monotonic() + 60
    while "SIGTERM: checkpointed" not in _log_text(folder):
        assert time.monotonic() < deadline, _log_text(folder)[-2000:]
        time.sleep(0.2)
    term = re.search(r"SIGTERM: checkpointed at step (\d+)", _log_text(folder))
    print(f"USR2 after step >= {before}: checkpointed at step {usr2[1]}; SIGTERM: step {term[1]}")
    metrics = cluster.wait_for(job, spec.run_id)
    assert metrics["steps"] == 40 * 8

    _assert_same_as_a_local_run(spec, ckpt, tmp_path, monkeypatch)


def _assert_same_as_a_local_run(spec, ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    """The job's final weights equal the same run here, with the job's intra-op thread count
    (the GEMM's reduction split, and so the last bits, depend on it; an exported
    OMP_NUM_THREADS may differ from the job's)."""
    from pixbench.tasks.classify import run as classify

    threads = json.loads((ckpt.parents[1] / "manifest.json").read_text())["torch_threads"]
    monkeypatch.setenv("PIXBENCH_RUNS_DIR", str(tmp_path / "runs-local"))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        classify.run(spec, Paths(), progress=False)
    finally:
        torch.set_num_threads(before)
    ref = torch.load(Paths().run_dir(spec.profile, spec.run_id) / CKPT_NAME, weights_only=True)
    got = torch.load(ckpt, weights_only=True)
    for k in ref["modules"]["model"]:
        assert torch.equal(ref["modules"]["model"][k], got["modules"]["model"][k]), k
