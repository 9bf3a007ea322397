"""The one training loop (tasks/trainer.py): a task is its body, launched from the task table;
one device->host copy per logging interval, none inside a step."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from toytask import TOY, ToySpec

from pixbench.config import Paths
from pixbench.launch import launch
from pixbench.tasks import table, trainer
from pixbench.tasks.runner import Run

SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__")


@pytest.fixture
def toy_table(workdir, monkeypatch):
    monkeypatch.setitem(table.TASKS, "toy", TOY)
    return workdir


def _run(spec: ToySpec) -> dict:
    return launch(spec, Paths(), launcher="local", cluster=None)


def test_a_toy_task_in_one_file_trains_from_the_table(toy_table):
    metrics = _run(ToySpec())
    run_dir = Paths().run_dir("tiny", "toy-s0")
    curve = json.loads((run_dir / "curve.json").read_text())
    assert [r["step"] for r in curve] == [10, 20, 30, 40]
    assert curve[-1]["train_loss"] < curve[0]["train_loss"] / 4  # it learns
    assert metrics["final_loss"] == curve[-1]["train_loss"] and metrics["steps"] == 40
    assert {"spec.json", "manifest.json", "metrics.json", "ckpt"} <= {p.name for p in run_dir.iterdir()}


def test_a_killed_toy_run_resumes_to_the_same_end_and_a_finished_one_is_reused(toy_table,
                                                                                monkeypatch):
    full = _run(ToySpec(seed=1, steps=40))
    real = Run.tick

    def tick(self, state):  # killed right after a checkpoint at step 15 (mid-window)
        if state.global_step == 15:
            self.save(state)
            raise KeyboardInterrupt
        real(self, state)

    spec = ToySpec(seed=1, steps=40, profile="other")
    with monkeypatch.context() as m:
        m.setattr(Run, "tick", tick)
        with pytest.raises(KeyboardInterrupt):
            _run(spec)
    resumed = _run(spec)
    untimed = {"train_s", "wall_s", "profile", "spec_digest"}
    assert {k: v for k, v in resumed.items() if k not in untimed} == \
        {k: v for k, v in full.items() if k not in untimed}
    curve = [json.loads((Paths().run_dir(p, "toy-s1") / "curve.json").read_text())
             for p in ("tiny", "other")]
    assert [[(r["step"], r["train_loss"]) for r in c] for c in curve[:1]] == \
        [[(r["step"], r["train_loss"]) for r in c] for c in curve[1:]]
    monkeypatch.setattr("toytask.ToyBody.step", lambda *a: pytest.fail("retrained"))
    assert _run(spec) == resumed


@contextlib.contextmanager
def counted_syncs(body_cls, monkeypatch):
    """Counts of host syncs: tensor->host conversions inside `body_cls.step`, and the trainer's
    copies (`trainer.to_host`)."""
    counts = {"in_step": 0, "to_host": 0}
    inside = [False]
    for name in SYNCS:
        real = getattr(torch.Tensor, name)

        def counting(self, *a, _real=real, **k):
            if inside[0]:
                counts["in_step"] += 1
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counting)
    step = body_cls.step

    def watched(self, state):
        inside[0] = True
        try:
            return step(self, state)
        finally:
            inside[0] = False
    monkeypatch.setattr(body_cls, "step", watched)
    real_to_host = trainer.to_host

    def to_host(t):
        counts["to_host"] += 1
        return real_to_host(t)
    monkeypatch.setattr(trainer, "to_host", to_host)
    yield counts


def test_toy_steps_make_no_host_sync_and_the_loop_one_per_interval(toy_table, monkeypatch):
    from toytask import ToyBody

    with counted_syncs(ToyBody, monkeypatch) as counts:
        _run(ToySpec(seed=2, steps=40))
    assert counts == {"in_step": 0, "to_host": 4}  # 4 curve rows, 40 steps


def test_classify_steps_make_no_host_sync(tiny_project, monkeypatch):
    """A real task: classification's step (loader, augmentation, forward, clip, AdamW) keeps
    its loss on the device; the loop copies once per curve row (every 5 steps here) or
    SYNC_EVERY steps."""
    from pixbench.config import load_params, make_classify_spec
    from pixbench.tasks.classify import run as classify

    spec = make_classify_spec(load_params(tiny_project), size=None, patch=8, seed=0)
    with counted_syncs(classify.Cell, monkeypatch) as counts:
        metrics = classify.run(spec, Paths(), progress=False)
    rows = len(json.loads((Paths().run_dir("tiny", spec.run_id) / "curve.json").read_text()))
    assert counts["in_step"] == 0
    assert 0 < counts["to_host"] <= rows + metrics["steps"] // trainer.SYNC_EVERY + 1


def test_a_non_finite_loss_names_its_step_at_the_next_sync(toy_table, monkeypatch):
    """Losses stay on the device between syncs; the guard still names the step where the loss
    stopped being finite, and the run stops before any later checkpoint."""
    from pixbench.errors import UserError
    from toytask import ToyBody

    step = ToyBody.step

    def poisoned(self, state):
        out = step(self, state)
        return {"loss": out["loss"] * float("nan")} if state.global_step == 13 else out
    monkeypatch.setattr(ToyBody, "step", poisoned)
    with pytest.raises(UserError, match=r"non-finite loss at step 14; last good checkpoint: "
                                        r"\S+ \(step 10\), kept"):
        _run(ToySpec(seed=3))


def test_where_collectives_sync_the_device_ranks_poll_every_sync_interval(toy_table,
                                                                          monkeypatch):
    """On NCCL the ranks' stop/guard/checkpoint verdict is a device sync: the runner takes it
    every SYNC_EVERY steps (and at rows and saves), not every step; with gloo or one process
    it is free and taken every step."""
    from pixbench import distributed

    polls = []
    real = distributed.max_over_ranks
    monkeypatch.setattr(distributed, "max_over_ranks", lambda v: polls.append(v) or real(v))
    steps = 3 * trainer.SYNC_EVERY + 5
    _run(ToySpec(seed=4, steps=steps, profile="host"))
    every_step = len(polls)
    assert every_step >= steps
    polls.clear()
    monkeypatch.setattr(distributed, "host_collectives", lambda: False)
    _run(ToySpec(seed=4, steps=steps, profile="nccl"))
    rows = steps // 10 + 1
    # ticks, a guard and a save per row, and the run dir's open/claim/finish agreements
    assert len(polls) <= steps // trainer.SYNC_EVERY + 2 * rows + 5 < every_step
    curves = [json.loads((Paths().run_dir(p, "toy-s4") / "curve.json").read_text())
              for p in ("host", "nccl")]
    assert [r["train_loss"] for r in curves[0]] == [r["train_loss"] for r in curves[1]]
