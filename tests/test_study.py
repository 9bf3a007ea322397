"""The study without a scheduler: per-task resources, finished cells never submitted, the DAG
read from DVC, how cells are grouped into jobs and arrays, sacct parsing, the summary."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_DATA, make_tiny_cache
from studyrepo import make_study_repo, study_params

from pixbench import cluster, launch
from pixbench.config import Paths, load_params, make_classify_spec
from pixbench.config.pipeline import PrepareSpec
from pixbench.errors import UserError
from pixbench.study import state as study_state
from pixbench.study.view import summary
from pixbench.tasks.table import Task


def test_task_resources_default_to_the_profile_and_validate(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXBENCH_CLUSTER_DIR", str(tmp_path))
    (tmp_path / "c.yaml").write_text(
        "partition: gpu\ngpus_per_node: 8\ntasks_per_node: 8\nmem_gb: 480\ntasks:\n"
        "  report: {gpus_per_node: 0, mem_gb: 16}\n  dit: {timeout_min: 2880}\n")
    profile = cluster.load_cluster("c")
    assert profile.resources("report") == {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1,
                                           "cpus_per_task": 2, "mem_gb": 16, "timeout_min": 60}
    assert profile.resources("dit")["gpus_per_node"] == 8 and \
        profile.resources("dit")["timeout_min"] == 2880
    assert profile.resources("classify") == profile.resources(None)
    (tmp_path / "c.yaml").write_text("partition: gpu\ntasks:\n  dit-train: {gpus_per_node: 1}\n")
    with pytest.raises(UserError, match=r"c.yaml: tasks: unknown task 'dit-train' \(known: "):
        launch.load_task_cluster("c")  # the task table is above the cluster module
    (tmp_path / "c.yaml").write_text("partition: gpu\ntasks:\n  dit: {gpus: 1}\n")
    with pytest.raises(UserError, match=r"c.yaml: tasks.dit.gpus: unknown key"):
        cluster.load_cluster("c")
    (tmp_path / "c.yaml").write_text("partition: gpu\ntasks:\n  dit: {mem_gb: -1}\n")
    with pytest.raises(UserError, match=r"c.yaml: tasks.dit.mem_gb: Input should be greater"):
        cluster.load_cluster("c")


def test_make_executor_sets_dependency_and_task_resources(tmp_path):
    profile = cluster.ClusterProfile(partition="p", tasks={"report": {"cpus_per_task": 5}})
    ex = cluster.make_executor(profile, tmp_path, "x", "report", ["12_3", "14"])
    params = ex._executor.parameters
    assert params["cpus_per_task"] == 5
    assert params["additional_parameters"] == {"dependency": "afterok:12_3:14",
                                               "kill_on_invalid_dep": "yes"}


def test_launch_never_submits_a_finished_cell(tiny_project, monkeypatch):
    spec = make_classify_spec(load_params(tiny_project), size=None, patch=4, seed=0)
    first = launch.launch(spec, Paths(), launcher="local", cluster=None)
    monkeypatch.setattr(launch.shutil, "which", lambda _: "/usr/bin/sbatch")
    monkeypatch.setattr(launch, "make_executor", lambda *a, **k: pytest.fail("submitted"))
    metrics_file = Paths().reports_dir / "metrics" / "tiny" / f"{spec.run_id}.json"
    metrics_file.unlink()  # as DVC does before it runs the stage
    again = launch.launch(spec, Paths(), launcher="slurm", cluster="local")
    assert again["top1"] == first["top1"] and metrics_file.exists()  # published again


def test_a_prepared_cache_is_reused_only_when_it_matches(workdir, monkeypatch):
    spec = PrepareSpec(profile="tiny", track="classify", data=TINY_DATA)
    assert launch.finished("prepare", spec, Paths()) is None
    make_tiny_cache(workdir / "data" / "tiny")
    assert launch.finished("prepare", spec, Paths())["counts"] == {"train": 256, "val": 64}
    monkeypatch.setattr(Task, "run", lambda *a, **k: pytest.fail("prepared again"))
    monkeypatch.setattr(launch.shutil, "which", lambda _: "/usr/bin/sbatch")
    monkeypatch.setattr(launch, "make_executor", lambda *a, **k: pytest.fail("submitted"))
    assert launch.launch(spec, Paths(), launcher="slurm", cluster="local")["state"] \
        == "DONE"
    other = PrepareSpec(profile="tiny", track="classify", data={**TINY_DATA, "image_size": 12})
    assert launch.finished("prepare", other, Paths()) is None
    with open(workdir / "data" / "tiny" / "train_images.npy", "r+b") as f:
        f.seek(200)
        f.write(b"\xff\xfe")  # the hash no longer matches: prepare writes a fresh cache
    assert launch.finished("prepare", spec, Paths()) is None


@pytest.fixture(scope="module")
def study_repo(tmp_path_factory):
    return make_study_repo(tmp_path_factory.mktemp("study"), study_params())


def test_the_dag_comes_from_dvc(study_repo, monkeypatch):
    from pixbench.cli.options import pixbench_command as cli
    from pixbench.study.dag import load_cells

    monkeypatch.chdir(study_repo)
    for var in ("PIXBENCH_RUNS_DIR", "PIXBENCH_CACHE_DIR", "PIXBENCH_REPORTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    cells = {c.name: c for c in load_cells(study_repo, cli=cli)}
    assert len(cells) == 25 and not any(c.done for c in cells.values())
    assert cells["mae-finetune@tiny-xxs-p2-s0"].parents == ["mae-pretrain@tiny-xxs-p2-s0", "prepare@tiny"]
    assert cells["dit-eval@tiny-xxs-p1-s0"].parents == ["dit-train@tiny-xxs-p1-s0", "featnet@tiny", "vq-encode@tiny",
                                                "vq-train@tiny"]
    assert cells["classify@tiny-xxs-p4-s0"].task == "classify" and \
        cells["classify@tiny-xxs-p4-s0"].run_id == "classify-xxs-p4-s0"
    assert cells["mae-pretrain-alt@tiny-xxs-p4-s0-norm_pix"].run_id == "mae-pretrain-xxs-p4-s0-norm_pix"
    assert len(cells["report@tiny"].parents) == 24 - 2  # every cell but itself, verify, prepare-gen
    assert "report@tiny" in cells["verify@tiny"].parents  # verify reads the report: the last stage
    names = list(cells)
    assert all(names.index(p) < names.index(n) for n, c in cells.items() for p in c.parents)
    small = [c.name for c in load_cells(study_repo, ["mae-linprobe"], cli=cli)]
    assert sorted(small) == ["mae-linprobe@tiny-xxs-p2-s0", "mae-linprobe@tiny-xxs-p4-s0",
                             "mae-pretrain@tiny-xxs-p2-s0", "mae-pretrain@tiny-xxs-p4-s0", "prepare@tiny"]
    with pytest.raises(UserError, match="study target 'nope'"):
        load_cells(study_repo, ["nope"], cli=cli)


class FakeExecutor:
    """Records what make_executor was asked for and each submission (one array per batch)."""

    log: list = []
    next_id = [100]

    def __init__(self, task, deps):
        self.task, self.deps, self.in_batch = task, deps, None

    def batch(self):
        import contextlib

        @contextlib.contextmanager
        def ctx():
            self.in_batch = []
            yield
            FakeExecutor.log.append((self.task, self.deps, len(self.in_batch)))
            self.in_batch = None
        return ctx()

    def submit(self, job):
        class Job:
            pass

        j = Job()
        if self.in_batch is not None:
            j.job_id = f"{FakeExecutor.next_id[0]}_{len(self.in_batch)}"
            self.in_batch.append(j)
            if len(self.in_batch) == 1:
                FakeExecutor.next_id[0] += 1
        else:
            j.job_id = str(FakeExecutor.next_id[0])
            FakeExecutor.next_id[0] += 1
            FakeExecutor.log.append((self.task, self.deps, 1))
        return j


def test_cells_go_as_arrays_waiting_only_for_their_parents(study_repo, monkeypatch):
    from pixbench.cli.options import pixbench_command
    from pixbench.study.dag import load_cells
    from pixbench.study.submit import submit_cells

    monkeypatch.chdir(study_repo)
    for var in ("PIXBENCH_RUNS_DIR", "PIXBENCH_CACHE_DIR", "PIXBENCH_REPORTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    cells = load_cells(study_repo, ["classify", "mae-finetune"], cli=pixbench_command)
    cells[[c.name for c in cells].index("mae-pretrain@tiny-xxs-p4-s0")].done = True  # reused
    monkeypatch.setattr(cluster, "make_executor",
                        lambda profile, folder, name, task, deps: FakeExecutor(task, deps))
    FakeExecutor.log.clear()
    jobs = submit_cells(cells, profile=None, folder=study_repo, paths={})
    log = {(task, tuple(deps), n) for task, deps, n in FakeExecutor.log}
    prep = jobs["prepare@tiny"].job_id
    assert (("prepare", (), 1)) in log
    assert ("classify", (prep,), 2) in log  # one array of both classify cells
    pre2 = jobs["mae-pretrain@tiny-xxs-p2-s0"].job_id
    assert ("mae-finetune", tuple(sorted((prep, pre2))), 1) in log
    assert ("mae-finetune", (prep,), 1) in log  # its pre-training is finished: not waited for
    assert "mae-pretrain@tiny-xxs-p4-s0" not in jobs and len(FakeExecutor.log) == 5


def test_sacct_lines_and_pending_arrays(monkeypatch):
    class Out:
        returncode, stderr = 0, ""
        stdout = ("7|COMPLETED|2026-01-01T00:00:00|2026-01-01T00:00:05\n"
                  "8_[1-2,4%2]|PENDING|Unknown|Unknown\n8_0|RUNNING|2026-01-01T00:00:06|Unknown\n"
                  "9|CANCELLED by 0|None|2026-01-01T00:00:05\n")

    monkeypatch.setattr(study_state.subprocess, "run", lambda *a, **k: Out())
    rows = study_state.sacct(["7", "8_0", "8_1", "9"])
    assert rows["7"]["state"] == "done" and rows["7"]["end"] == "2026-01-01T00:00:05"
    assert [rows[f"8_{i}"]["state"] for i in (0, 1, 2, 4)] == ["running"] + ["pending"] * 3
    assert rows["9"]["state"] == "cancelled" and rows["9"]["start"] is None


def test_summary_names_the_failed_cell_its_job_log_and_traceback(tmp_path):
    log = tmp_path / "5_0_log.err"
    log.write_text("noise\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "pixbench.errors.UserError: ckpt/last.pt: not a pixbench checkpoint\n")
    rows = [{"name": "a", "task": "mae-pretrain", "run_id": "mae-pretrain-xxs-p2-s0",
             "parents": [], "job_id": "5", "log": str(log), "state": "failed", "raw": "FAILED"},
            {"name": "b", "task": "mae-finetune", "run_id": "r", "parents": ["a"],
             "job_id": "6", "log": None, "state": "cancelled", "raw": "CANCELLED"},
            {"name": "c", "task": "classify", "run_id": "r", "parents": [], "job_id": "7",
             "log": None, "state": "done", "raw": "COMPLETED"}]
    text = "\n".join(summary({"id": "s1"}, rows))
    assert "FAILED a (mae-pretrain mae-pretrain-xxs-p2-s0): job 5 FAILED, log " + str(log) in text
    assert "not a pixbench checkpoint" in text and "cancelled (a parent failed): b" in text
    assert "1 done, 1 failed, 1 cancelled" in text
    assert json.dumps(rows)  # the state file's rows stay plain JSON


def test_a_cell_queued_by_an_earlier_study_is_not_submitted_again(workdir, monkeypatch):
    folder = study_state.studies_dir(Paths()) / "s1"
    folder.mkdir(parents=True)
    cells = [{"name": "classify@tiny-xxs-p4-s0", "run_id": "classify-xxs-p4-s0", "job_id": "7"},
             {"name": "prepare@tiny", "run_id": "prepare", "job_id": "6"}]
    study_state.write_state(folder, {"id": "s1", "cells": cells})
    monkeypatch.setattr(study_state, "sacct", lambda ids: {"7": {"state": "running"},
                                                           "6": {"state": "done"}})
    assert study_state.queued_elsewhere(Paths(), {"classify-xxs-p4-s0", "prepare"}) == \
        ["classify@tiny-xxs-p4-s0 (study s1, job 7)"]
    assert study_state.study_folder(Paths(), None) == folder  # the latest
    with pytest.raises(UserError, match="study id"):
        study_state.study_folder(Paths(), "../x")


def test_a_failed_jobs_long_traceback_keeps_its_error_line(tmp_path):
    """The summary shows the end of a deep remote traceback, where the one-line error is."""
    from pixbench.study.view import remote_traceback

    log = tmp_path / "job.err"
    frames = [f'  File "x.py", line {i}, in f{i}\n    f{i + 1}()' for i in range(60)]
    log.write_text("noise\nTraceback (most recent call last):\n" + "\n".join(frames)
                   + "\npixbench.errors.UserError: ckpt/last.pt: unreadable checkpoint\n")
    shown = remote_traceback(str(log)).splitlines()
    assert shown[0].startswith("Traceback") and "lines of the stack left out" in shown[1]
    assert shown[-1].endswith("unreadable checkpoint") and len(shown) <= 40
    short = tmp_path / "short.err"
    short.write_text("Traceback (most recent call last):\n  File \"y.py\"\nValueError: bad\n")
    assert remote_traceback(str(short)).splitlines()[-1] == "ValueError: bad"
