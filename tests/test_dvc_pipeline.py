"""dvc.yaml tracks everything: every stage declares every pixbench module its command can
import (derived here, not listed by hand), and the metrics and plots DVC shows.

The modules a stage reads: its command is run through the real CLI with `launch` stubbed, which
names the task; the task's run module and its spec's module are the roots; every `import` in
them (module level or lazy, inside functions) is followed through src/pixbench. The CLI and the
launcher only choose which run to start (the spec digest guards the run itself), so they are
not roots."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from importgraph import ROOT, closure

def missing_deps(files: set[Path], deps: list[str]) -> list[str]:
    """Files not covered by a declared dep (the file itself or a folder above it)."""
    dep_paths = [Path(d) for d in deps]
    return sorted(str(f) for f in files if not any(f == d or d in f.parents for d in dep_paths))


def task_of(cmd: str, monkeypatch) -> str:
    """The task a stage's command launches: run the real CLI with `launch` stubbed."""
    from typer.testing import CliRunner

    import pixbench.launch
    from pixbench.cli import app

    seen = []

    def fake_launch(spec, paths, **kw):
        seen.append(spec.task)
        raise SystemExit(0)

    monkeypatch.setattr(pixbench.launch, "launch", fake_launch)
    args = shlex.split(cmd)
    assert args[0] == "pixbench", cmd
    result = CliRunner().invoke(app, args[1:])
    assert seen, f"{cmd!r} launched no task: {result.output} {result.exception!r}"
    return seen[0]


def stages():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return [(s.addressing, s.cmd, [str(d.def_path) for d in s.deps],
                 [str(o.def_path) for o in s.outs if o.metric],
                 [str(o.def_path) for o in s.outs if o.plot]) for s in repo.index.stages]


@pytest.fixture(scope="module")
def pipeline():
    return stages()


def task_files(task: str) -> set[Path]:
    """What a task's result depends on: its body's and spec's modules and all they import; a
    stateless task (report, verify) is also handed the task table's results (tasks/table.py),
    not its bodies."""
    from pixbench.tasks.table import TASKS

    entry = TASKS[task]
    files = closure({entry.body().__module__, entry.spec.__module__})
    return files | ({Path("src/pixbench/tasks/table.py")} if entry.stateless else set())


def test_every_stage_declares_every_module_it_reads(pipeline, monkeypatch):
    monkeypatch.chdir(ROOT)
    problems, by_task = [], {}
    for name, cmd, deps, _, _ in pipeline:
        task = task_of(cmd, monkeypatch)
        if task not in by_task:
            by_task[task] = task_files(task)
        problems += [f"{name}: {f}" for f in missing_deps(by_task[task], deps)]
    assert not problems, "dvc.yaml misses deps:\n" + "\n".join(problems)


def test_the_check_fails_when_a_dep_is_removed(pipeline, monkeypatch):
    monkeypatch.chdir(ROOT)
    name, cmd, deps, _, _ = next(s for s in pipeline if s[0].startswith("classify"))
    files = task_files(task_of(cmd, monkeypatch))
    assert Path("src/pixbench/tasks/runner.py") in files
    assert Path("src/pixbench/models/flops.py") in files
    assert not missing_deps(files, deps)
    for removed in deps:
        if removed.startswith("src/"):
            assert missing_deps(files, [d for d in deps if d != removed]), removed


def test_dvc_shows_one_summary_per_profile(pipeline):
    """The metrics DVC shows are each profile's summary (report); a cell's own metrics file and
    verify's counts are plain outputs beside it (detail), so `dvc metrics show` lists a study
    in a few columns instead of every number of every cell."""
    for name, _, _, metrics, _ in pipeline:
        stage, profile = name.split("@")[0], name.split("@")[1].split("-xxs")[0]
        if stage == "report":
            assert metrics == [f"reports/summary.json"], name  # the first study's place
        else:
            assert metrics == [], name


def test_cells_yaml_is_the_studies_of_params_yaml():
    """cells.yaml (what dvc.yaml's foreach reads) is params.yaml's studies, each profile's own
    sweeps: a stale one is refused naming the fix."""
    from pixbench.config import load_params
    from pixbench.config.cells import check_cells, study_cells
    from pixbench.errors import UserError

    params = load_params(ROOT / "params.yaml")
    check_cells(params, ROOT)
    cells = study_cells(params)
    sw = params.switch(params.studies[0]).sweep
    assert len(cells["classify"]) == len(sw.sizes) * len(sw.patches) * len(sw.seeds)
    other = params.model_copy(update={"studies": [params.studies[0]]})
    other = other.model_copy(update={"profiles": {
        **params.profiles, params.studies[0]: params.active.model_copy(
            update={"sweep": sw.model_copy(update={"seeds": [0]})})}})
    with pytest.raises(UserError, match="stale.*pixbench study cells"):
        check_cells(other, ROOT)


def test_dvc_tracks_identities_not_data_or_run_dirs(pipeline):
    """No stage outputs or depends on a cache or a run dir: DVC would hash and copy them (a
    244 GiB ImageNet cache, GB checkpoints) and they may live outside the repo
    (PIXBENCH_CACHE_DIR, PIXBENCH_RUNS_DIR). A cache's identity is its manifest's copy in
    reports/data/, a cell's its published metrics file."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        for stage in repo.index.stages:
            for path in [str(d.def_path) for d in stage.deps] + [str(o.def_path) for o in stage.outs]:
                assert not path.startswith(("data/", "runs/")), (stage.addressing, path)
            if stage.addressing.startswith("prepare"):
                assert [str(o.def_path) for o in stage.outs] == [
                    f"reports/data/{stage.addressing.split('@')[1]}"
                    f"{'-gen' if stage.addressing.startswith('prepare-gen') else ''}.json"]
