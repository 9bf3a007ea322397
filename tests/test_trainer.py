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


def test_progress_lines_carry_an_eta_from_this_sessions_step_time():
    """The ETA is the remaining steps at this session's mean step time (train_time_s: no
    evaluations); a heartbeat is due every HEARTBEAT_S of wall time, not before."""
    import io

    from pixbench.tasks.livelog import Progress, duration
    from pixbench.tasks.runner import State

    now = [100.0]
    state = State(global_step=20, train_time_s=50.0)  # resumed: its earlier session is ignored
    out = io.StringIO()
    meter = Progress("cell", 120, state, every_s=30, out=out, clock=lambda: now[0])
    assert meter.eta_s(state) is None and not meter.due()
    state.global_step, state.train_time_s = 40, 60.0  # 20 steps in 10 s of training
    now[0] = 125.0  # 25 s of wall time: 15 of them evaluations, left out of the rate
    assert meter.eta_s(state) == pytest.approx(40.0)  # 80 steps at 0.5 s
    assert not meter.due()
    now[0] = 130.0
    assert meter.due()
    line = meter.line(state, "step 40/120", "loss 1.0")
    assert line == "cell step 40/120 loss 1.0 | 33% elapsed 30s eta 40s"
    assert out.getvalue() == line + "\n" and not meter.due()
    assert [duration(s) for s in (0.44, 9.96, 59.6, 75, 3725)] == \
        ["0.4s", "10s", "1m00s", "1m15s", "1h02m"]


def test_a_long_run_prints_its_eta_between_curve_rows_without_a_sync(toy_table, monkeypatch,
                                                                      capsys):
    """Heartbeats between rows (every step here: HEARTBEAT_S = 0) name the step and an ETA that
    shrinks towards 0 at the step time; none adds a host sync."""
    import re
    import time as _time

    import toytask
    from pixbench.tasks import livelog

    monkeypatch.setattr(livelog, "HEARTBEAT_S", 0.0)
    step = toytask.ToyBody.step

    def slow(self, state):  # 20 ms a step: the ETA at step k is about 20 ms * (40 - k)
        _time.sleep(0.02)
        return step(self, state)
    monkeypatch.setattr(toytask.ToyBody, "step", slow)
    with counted_syncs(toytask.ToyBody, monkeypatch) as counts:
        toytask.run(ToySpec(seed=5), Paths(), progress=True)
    assert counts == {"in_step": 0, "to_host": 4}
    lines = capsys.readouterr().err.splitlines()
    beats = [re.fullmatch(r"toy-s5 step (\d+)/40 \| (\d+)% elapsed [\d.]+s eta ([\d.]+)s", x)
             for x in lines]
    beats = [(int(m[1]), int(m[2]), float(m[3])) for m in beats if m]
    assert [k for k, _, _ in beats] == [k for k in range(1, 40) if k % 10]  # rows print their own
    for k, pct, eta in beats:
        assert pct == round(100 * k / 40)
        assert 0.02 * (40 - k) / 3 - 0.05 <= eta <= 0.02 * (40 - k) * 3 + 0.05, (k, eta)
    rows = [x for x in lines if " loss " in x]
    assert [x.split(" loss ")[0] for x in rows] == [f"toy-s5 step {k}/40" for k in (10, 20, 30, 40)]
    assert rows[-1].endswith(" eta 0.0s") and "| 100% elapsed " in rows[-1]


def test_min_steps_grows_the_epochs_of_every_classification_recipe(tiny_project):
    """On a small dataset the epochs grow to ceil(min_steps / steps_per_epoch), for the
    classify recipe and the MAE fine-tune / probe / scratch recipes alike (one engine); null
    keeps the recipe's epochs; the metrics record the steps and epochs trained."""
    from pixbench.config import load_params, make_classify_spec, make_mae_spec
    from pixbench.tasks.classify import run as classify
    from pixbench.tasks.classify.engine import ClassifyBody, train_epochs

    params = load_params(tiny_project)  # 256 images, batch 32: 8 steps an epoch, 2 epochs
    specs = [make_classify_spec(params, size=None, patch=8, seed=0)] + [
        make_mae_spec(params, task=t, size=None, patch=4, seed=0)
        for t in ("mae-finetune", "mae-linprobe", "mae-scratch")]
    for spec in specs:
        for min_steps, epochs in ((None, 2), (10, 2), (16, 2), (17, 3), (20, 3), (100, 13)):
            cfg = spec.classify.model_copy(update={"min_steps": min_steps})
            grown = spec.model_copy(update={"classify": cfg})
            ds, data = classify.load_data(grown, Paths())
            body = ClassifyBody(grown, classify.build_model(grown, ds.manifest), data,
                                device=torch.device("cpu"), bf16=False)
            assert (body.epochs, body.schedule.steps) == (epochs, 8 * epochs), (spec.task, min_steps)
            assert train_epochs(cfg, 8) == epochs
    spec = specs[0].model_copy(update={"classify": specs[0].classify.model_copy(
        update={"min_steps": 20})})
    metrics = classify.run(spec, Paths(), progress=False)
    assert (metrics["steps"], metrics["epochs"]) == (24, 3)
    curve = json.loads((Paths().run_dir("tiny", spec.run_id) / "curve.json").read_text())
    assert curve[-1]["step"] == 24 and curve[-1]["epoch"] == 3
