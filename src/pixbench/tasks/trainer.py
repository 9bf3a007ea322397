"""The one training loop: every task that trains is a `Body` run by `fit`, inside `run_task`.

A body is the algorithm (MAE's engine without the plumbing): its modules, one optimiser
`step`, the `row` a curve records, and its `outputs`. Everything between them lives here once:

- the step loop over a `Schedule` (epochs, or steps with a curve row every `row_every`), resumed
  at the State's (epoch, epoch_step, global_step): batches and noise are functions of (seed,
  step), so a resumed run ends where an uninterrupted one does, bit for bit;
- the loss window (an epoch, or a curve interval) whose mean is the row's `train_loss`;
- host syncs: a step's values stay on the device until a sync point (a curve row, the end of
  an epoch, a checkpoint, or every `SYNC_EVERY` steps): one device->host copy for all of them.
  A step itself makes none (a per-step `loss.item()` stalls a GPU on small models);
- the runner's tick after every step (stop signals, time-based checkpoints; runner.py), a
  checkpoint at every window end, progress lines with the elapsed time and an ETA (livelog.py);
- `run_task`: a finished run is reused; inputs are checked before the run dir is claimed; the
  identity of the metrics (run id, task, profile, seed, digest, steps, times, device).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from pixbench import distributed
from pixbench.tasks.livelog import Progress
from pixbench.tasks.runner import SYNC_EVERY, Run, State


@dataclasses.dataclass(frozen=True)
class Schedule:
    steps: int  # optimiser updates in all
    epoch_steps: int | None = None  # epoch-based: the loss window is the epoch, a row at its end
    row_every: int = 0  # a row every this many steps: the window (step-based) or mid-epoch points


class Body:
    """What a task supplies. `step` returns this step's values as 0-d device tensors (or host
    numbers that are already global): "loss" goes to the window's mean (weighted by "n" when
    given); any other key is kept per step in `state.window` for the row."""

    schedule: Schedule
    mean_over_ranks = False  # tensors are this rank's shard's: average them over ranks
    curve = True  # write curve.json (a task that trains nothing may have none)
    run_id = ""

    def modules(self) -> dict[str, Any]:
        """What the checkpoint holds (modules, optimisers)."""
        return {}

    def start(self, state: State) -> None:
        """Before the first step of an epoch, or of a resumed run (e.g. its batch iterator)."""

    def step(self, state: State) -> dict[str, Any]:
        raise NotImplementedError

    def row(self, state: State, train_loss: float, end: bool) -> dict:
        """The curve row at this step (`end`: the window's last step; evaluations go here)."""
        return {"step": state.global_step, "train_loss": train_loss,
                "train_time_s": state.train_time_s}

    def progress(self, row: dict) -> str:
        return f"loss {row['train_loss']:.4f}"

    def finish(self, state: State) -> None:
        """After the last step (e.g. back to eval mode)."""


class _Pending:
    """Step values not yet on the host: one copy at the next sync."""

    def __init__(self, body: Body, state: State, run: Run | None) -> None:
        self.body, self.state, self.run, self.steps = body, state, run, []

    def add(self, values: dict[str, Any]) -> None:
        self.steps.append((self.state.global_step, values))

    def __len__(self) -> int:
        return len(self.steps)

    def __call__(self) -> None:
        """Copy every pending tensor to the host at once, then fold the values into the
        State in step order (the running sums a checkpoint holds)."""
        if not self.steps:
            return
        t0 = time.perf_counter()
        keys = [k for k, v in self.steps[0][1].items() if isinstance(v, torch.Tensor)]
        if keys:
            # float64 holds a float32 or bf16 value exactly: the same number `.item()` gives
            stacked = torch.stack([v[k].detach().double() for _, v in self.steps for k in keys])
            host = to_host(stacked)  # the sync: (steps * keys,)
            if self.body.mean_over_ranks:
                host = rank_mean_list(host)
        self.state.train_time_s += time.perf_counter() - t0  # waiting on the device is training
        for i, (step, values) in enumerate(self.steps):
            values = dict(values)
            for j, k in enumerate(keys):
                values[k] = host[i * len(keys) + j]
            self._fold(step, values)
        self.steps = []

    def _fold(self, step: int, values: dict) -> None:
        loss, n = values.pop("loss", None), values.pop("n", 1)
        if loss is not None:
            if not _finite(loss) and self.run is not None:
                raise self.run.diverged(self.state, "loss", step + 1)
            self.state.add_loss(loss, n)
        if values:
            self.state.window.append(values)


def to_host(t: torch.Tensor) -> list[float]:
    """The training loop's one device->host copy per sync point (tests count calls here)."""
    return t.tolist()


def rank_mean_list(values: list[float]) -> list[float]:
    """Per-rank values -> their mean over ranks, element-wise in float64 (one collective)."""
    if distributed.world_size() == 1:
        return values
    t = torch.tensor([values], dtype=torch.float64)  # (1, K)
    return distributed.gather_rows(t).mean(0).tolist()


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def fit(body: Body, state: State, run: Run | None = None, *, progress: bool = False) -> State:
    """Train from the State's position to `body.schedule.steps`; `run` (None: no run dir, e.g.
    a notebook's FeatNet) ticks and checkpoints. `progress`: lines with an ETA on stderr (rank
    0) at every curve row and window end, and at least every HEARTBEAT_S in between."""
    s, pending = body.schedule, _Pending(body, state, run)
    meter = Progress(body.run_id, s.steps, state) if progress and distributed.is_main() else None
    if run is not None:
        run.before_save = pending
    while state.global_step < s.steps:
        body.start(state)
        while state.global_step < s.steps:
            t0 = time.perf_counter()
            pending.add(body.step(state))
            state.global_step += 1
            if s.epoch_steps is not None:
                state.epoch_step += 1
            state.train_time_s += time.perf_counter() - t0
            end = _window_end(s, state)
            mid = not end and s.row_every > 0 and state.global_step % s.row_every == 0
            if end or mid or len(pending) >= SYNC_EVERY:
                pending()
            if mid:
                row = _record(body, state, run, end=False)
            if end:
                _end_window(body, state, run, meter)
                if s.epoch_steps is not None:
                    break  # the next epoch starts with `body.start`
            elif run is not None:
                run.tick(state)
            if meter is not None and not end and (mid or meter.due()):
                # a curve row's line, or a heartbeat: no loss, which would need a host sync
                meter.line(state, where(s, state), body.progress(row) if mid else "")
    pending()
    body.finish(state)
    return state


def where(s: Schedule, state: State) -> str:
    """'epoch 2/3 step 250/468' (epoch-based: the epoch under way, or just ended) or
    'step 250/1000'."""
    at = f"step {state.global_step}/{s.steps}"
    if not s.epoch_steps:
        return at
    epoch = state.epoch if state.epoch_step == 0 and state.global_step else state.epoch + 1
    return f"epoch {epoch}/{s.steps // s.epoch_steps} {at}"


def _window_end(s: Schedule, state: State) -> bool:
    if s.epoch_steps is not None:
        return state.epoch_step == s.epoch_steps
    return state.global_step == s.steps or (s.row_every > 0
                                            and state.global_step % s.row_every == 0)


def _record(body: Body, state: State, run: Run | None, end: bool) -> dict:
    """A curve row, after the loss guard (a diverged run records no NaN row)."""
    if run is not None:
        run.check(state)
    row = body.row(state, state.loss_sum / max(1, state.loss_count), end)
    state.history.append(row)
    return row


def _end_window(body: Body, state: State, run: Run | None, meter: Progress | None) -> None:
    """The window's row, a new window (and epoch), a checkpoint, a progress line."""
    row = _record(body, state, run, end=True)
    state.take_mean_loss()
    state.window = []
    if body.schedule.epoch_steps is not None:
        state.epoch, state.epoch_step = state.epoch + 1, 0
    if run is not None:
        run.save(state)
    if meter is not None:
        meter.line(state, where(body.schedule, state), body.progress(row))


def identity(run: Run, state: State) -> dict:
    """The keys every trained run's metrics carry (before the task's own)."""
    spec = run.spec
    return {"run_id": spec.run_id, "task": spec.task, "profile": spec.profile,
            "seed": getattr(spec, "seed", None), "steps": state.global_step,
            "train_s": state.train_time_s, "wall_s": state.wall_time_s,
            "device": run.device.type, "spec_digest": spec.digest()}


class Once(Body):
    """A task that trains nothing (an evaluation, an import): `outputs(run, state)` is all."""

    schedule = Schedule(0)

    def __init__(self, outputs, curve: bool = False) -> None:
        self.outputs, self.curve = outputs, curve


def run_task(spec, paths, build, *, stale: str, device: str, progress: bool,
             checkpoint_every_s: float = 600.0) -> dict:
    """One run of a task in its run dir: reuse a finished one; else `build(run)` (reads and
    checks the inputs, builds the body; writes nothing), claim the run dir, restore (a body
    with modules: from then on a stop signal waits for a step boundary), `fit`, then
    `body.outputs(run, state)` (every rank; rank 0 writes) and metrics.json last."""
    r = Run.open(spec, paths, stale=stale, device=device, checkpoint_every_s=checkpoint_every_s)
    if not isinstance(r, Run):
        return r  # finished: its metrics
    with r:
        body = build(r)
        body.run_id = spec.run_id
        r.describe()
        modules = body.modules()
        state = r.restore(**modules) if modules else State()
        fit(body, state, r, progress=progress)
        metrics = body.outputs(r, state)
        return r.finish(metrics, curve=state.history if body.curve else None)
