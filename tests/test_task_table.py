"""The task table (tasks/table.py) is the one place a task is defined: the specs, dvc.yaml's
stages, verify's results and the cluster profiles agree with it."""

from __future__ import annotations

import typing
from pathlib import Path

import yaml

from pixbench.tasks.table import RESULTS, STATELESS, TASKS, task

ROOT = Path(__file__).resolve().parents[1]


def test_every_spec_class_names_the_tasks_it_is_the_spec_of():
    for name, entry in TASKS.items():
        allowed = typing.get_args(entry.spec.model_fields["task"].annotation)
        assert name in allowed, (name, entry.spec.__name__, allowed)
    # and a spec's task names no task outside the table
    for entry in TASKS.values():
        assert set(typing.get_args(entry.spec.model_fields["task"].annotation)) <= set(TASKS)


def test_dvc_stages_are_the_tables():
    stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    listed = [s for t in TASKS.values() for s in t.stages]
    assert len(listed) == len(set(listed))  # a stage runs one task
    assert stages == set(listed)


def test_stateless_tasks_are_handed_the_table_they_cannot_import(monkeypatch):
    """report and verify read every task's results; the table names them as bodies, so they
    get it as an argument (an import would be a cycle, and would make their DVC stages depend
    on every task body)."""
    for folder in ("verify", "report"):
        for f in (ROOT / "src/pixbench" / folder).glob("*.py"):
            assert "pixbench.tasks.table" not in f.read_text(), f
    seen = {}
    monkeypatch.setattr("pixbench.verify.run", lambda spec, paths, **kw: seen.update(kw) or {})
    TASKS["verify"].run(None, None, stale="error")
    assert seen == {"tasks": TASKS, "stale": "error"}
    assert STATELESS == {"report", "verify"} and set(RESULTS) == {
        n for n, t in TASKS.items() if t.results}
    assert task("dit").body.__name__ == "_dit" and callable(task("dit").body())


def test_an_unknown_task_is_one_line_naming_the_known_ones():
    import pytest

    from pixbench.errors import UserError

    with pytest.raises(UserError, match=r"unknown task 'dti' \(known: prepare, report, "):
        task("dti")
