"""The one task runner: what every task shares between "here is a spec" and "here are metrics".

A task is an entry of the task table (table.py); one that trains is a body run by the training
loop (trainer.py). What concerns the run dir lives here, once:

- the run-dir lifecycle: a finished run of the same spec digest is reused, a run dir left by
  another spec is refused (or discarded with `--stale restart`, only inside the runs dir);
- one process per run dir: `describe` (the first write) takes the run-dir lock (rundir.py)
  and checks the run dir again under it; `close` (or leaving `with run:`) releases it;
- the rank-aware device (each DDP rank takes its local GPU) and rank-0-only writes;
- the self-describing run dir: spec.json (resolved spec + digest), manifest.json (git SHA,
  versions, device, seed, world size);
- ONE checkpoint path (`ckpt/last.pt`) holding ONE `State` beside every module's and
  optimiser's state_dict, loaded with `weights_only=True`;
- stop signals (signals.py): SIGTERM/SIGUSR2 are recorded while training state is registered
  and acted on at the next `tick`: checkpoint, then exit (local) or requeue (SLURM), so at
  most the step in flight is redone;
- the divergence guard: a non-finite loss stops the run, naming the step it appeared at, when
  the trainer's next sync brings it to the host (at the latest before the next checkpoint;
  `before_save` is that sync); non-finite weights stop it before a checkpoint write,
  non-finite results before metrics.json; the last good checkpoint is never overwritten;
- atomic result files, metrics.json last: its presence marks the run finished.

Ranks agree on every branch (stop, diverged, refused) through one small collective.
MAE's launcher resumed from `checkpoint.pth` while saving `checkpoint-%s.pth`; with one path owned
by `Run.restore`/`Run.save` that cannot happen here.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import torch
from torch import nn

from pixbench import distributed
from pixbench.errors import UserError
from pixbench.runio import (CKPT_NAME, atomic_write_bytes, atomic_write_json, load_checkpoint,
                            read_json, run_manifest, save_checkpoint, writable_dir)
from pixbench.tasks.guards import finite_loss, float_tensors, nonfinite
from pixbench.tasks.rundir import METRICS, RunLock, finished_metrics, publish, remove_run_dir
from pixbench.tasks.signals import STOP, Interrupted, signal_name

# Steps between host syncs of the training loop (trainer.py: the step values' copy) and, on
# GPUs, of the ranks' stop/divergence verdicts: bounds how late a stop signal or a non-finite
# loss is acted on (SLURM warns signal_delay_s = 120 s ahead; 32 steps of DiT-XL/2 at batch
# 256 on one H100 take ~10 s).
SYNC_EVERY = 32


@dataclasses.dataclass
class State:
    """Everything a resumed run needs besides weights and optimiser moments.

    Batches, augmentation and noise are functions of (seed, step), so the step counters are the
    RNG positions. Running sums and curve rows are here so a resumed run reports the same
    means and curves as an uninterrupted one."""

    global_step: int = 0  # optimiser updates done
    epoch: int = 0  # next epoch to run (epoch-based tasks)
    epoch_step: int = 0  # next step within that epoch
    train_time_s: float = 0.0  # summed step time, across sessions
    wall_time_s: float = 0.0  # summed session wall time, across sessions
    loss_sum: float = 0.0  # of the current window (epoch or curve interval)
    loss_count: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)  # curve rows
    window: list[dict] = dataclasses.field(default_factory=list)  # rows of the current window
    extra: dict = dataclasses.field(default_factory=dict)  # task counters (e.g. code ages)

    def add_loss(self, loss: float, n: int = 1) -> None:
        """One step's loss, weighted by `n` (its images, where batches differ in size)."""
        self.loss_sum += loss * n if n != 1 else loss
        self.loss_count += n

    def take_mean_loss(self) -> float:
        """The mean loss of the window so far, and start a new window."""
        mean = self.loss_sum / max(1, self.loss_count)
        self.loss_sum, self.loss_count = 0.0, 0
        return mean


def pick_device(requested: str) -> torch.device:
    """auto: this rank's GPU when there is one, else the CPU."""
    requested = distributed.local_device(requested)
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: CUDA is not available on this machine")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise UserError(f"--device {requested!r}: expected auto, cpu, cuda or cuda:N")
    device = torch.device(requested)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # NCCL collectives use the current device, not cuda:0
    return device


class Run:
    """One run of one spec on this rank. `Run.open` returns the finished metrics instead when
    the run dir already holds them (on every rank). Use it as `with run:` so the lock and the
    signal handlers are released however the task ends."""

    def __init__(self, spec, paths, device: torch.device, checkpoint_every_s: float,
                 stale: str = "error") -> None:
        self.spec, self.paths, self.device, self.stale = spec, paths, device, stale
        self.dir = paths.run_dir(spec.profile, spec.run_id)
        self.ckpt_path = self.dir / CKPT_NAME
        self.checkpoint_every_s = checkpoint_every_s
        self.modules: dict[str, Any] = {}
        self._session_start = self._last_save = time.monotonic()
        self._wall_base = 0.0
        self._lock = RunLock(self.dir)
        self._claimed = False
        self._saved_step: int | None = None  # the step of the checkpoint on disk
        self._ckpt: dict | None = None  # ckpt/last.pt as read (and checked) by `_claim`
        self.before_save = None  # the trainer's sync: step values still on the device

    @classmethod
    def open(cls, spec, paths, *, stale: str = "error", device: str = "auto",
             checkpoint_every_s: float = 600.0) -> Run | dict:
        """Read-only checks of an existing run dir (a refused run writes nothing); the lock and
        a stale dir's deletion wait for `describe`."""
        if stale not in ("error", "restart"):
            raise UserError(f"--stale must be 'error' or 'restart', not {stale!r}")
        run_dir = paths.run_dir(spec.profile, spec.run_id)
        done = _on_main(lambda: finished_metrics(run_dir, spec, stale, paths.runs_dir,
                                                  delete=False))
        if distributed.max_over_ranks([int(done is not None)])[0]:
            done = done or read_json(run_dir / METRICS, "metrics")
            if distributed.is_main():  # DVC removed its copies before re-running the stage
                publish(paths, spec, done, run_dir / "curve.json")
            return done
        return cls(spec, paths, pick_device(device), checkpoint_every_s, stale)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)

    def close(self, ok: bool = False) -> None:
        """Release the lock and restore the signal handlers (idempotent). After a finished run
        (`ok`), a stop signal that came after the last step boundary is delivered now."""
        self._lock.release()
        STOP.disarm(self, deliver=ok)

    @property
    def is_main(self) -> bool:
        return distributed.is_main()

    def describe(self, **extra: Any) -> None:
        """spec.json + manifest.json. Call after inputs are checked and before anything else
        is written or restored: it claims the run dir."""
        self._claim()
        if self.is_main:
            writable_dir(self.dir, self.paths.runs_dir)
            self.write_json("spec.json", {"digest": self.spec.digest(),
                                          "spec": self.spec.canonical()})
            self.write_json("manifest.json",
                            {**run_manifest(getattr(self.spec, "seed", None), str(self.device)),
                             "world_size": distributed.world_size(), **extra})

    def _claim(self) -> None:
        """Before the first write: read the checkpoint to resume from (rank 0), take the run-dir
        lock (another holder is a one-line refusal), check the run dir again under it and
        discard a stale one (also one whose checkpoint is another spec's, with --stale
        restart)."""
        if self._claimed:
            return
        self._claimed = True

        def claim() -> None:
            bad = self._check_ckpt()
            self._lock.acquire()
            if finished_metrics(self.dir, self.spec, self.stale, self.paths.runs_dir, delete=True):
                raise UserError(f"{self.dir} was finished by another process meanwhile; run "
                                "the same command again to reuse it")
            if bad and self.dir.exists():
                remove_run_dir(self.dir, self.paths.runs_dir)

        _on_main(claim)

    def _check_ckpt(self) -> bool:
        """Read ckpt/last.pt, when there is one, for `restore`, before anything is written. One
        that does not load is refused whatever --stale says (damage, not staleness: deleting
        it is the user's call); another spec's is refused, or reported (True) for --stale
        restart to discard."""
        if not self.ckpt_path.exists():
            return False
        try:
            ckpt = load_checkpoint(self.ckpt_path)
        except UserError as exc:
            raise UserError(f"{exc}; remove {self.dir} to start the run over") from None
        try:
            self._ckpt = self._checked(ckpt)
        except UserError as exc:
            if self.stale == "restart":
                return True
            raise UserError(f"{exc}; pass --stale restart to discard the run dir") from None
        return False

    # ---------------------------------------------------------------------- checkpoint

    def restore(self, **modules: Any) -> State:
        """Register what the checkpoint holds (modules, optimisers: anything with
        state_dict/load_state_dict) and load it from ckpt/last.pt when there is one. From here
        on a stop signal waits for the next step boundary."""
        self.modules = modules
        state = self._load(modules) if self.ckpt_path.exists() else State()
        self._wall_base = state.wall_time_s
        STOP.arm(self)
        return state

    def _checked(self, ckpt: Any) -> dict:
        """A pixbench checkpoint of this spec, or a UserError naming the file."""
        if not isinstance(ckpt, dict) or "modules" not in ckpt or "spec_digest" not in ckpt:
            raise UserError(f"{self.ckpt_path}: not a pixbench checkpoint")
        if ckpt["spec_digest"] != self.spec.digest():
            raise UserError(f"{self.ckpt_path}: checkpoint was written for another spec "
                            f"({ckpt['spec_digest']} != {self.spec.digest()})")
        return ckpt

    def _load(self, modules: dict) -> State:
        ckpt = self._ckpt or self._checked(load_checkpoint(self.ckpt_path))  # other ranks
        self._ckpt = None
        try:
            for name, obj in modules.items():
                _unwrap(obj).load_state_dict(ckpt["modules"][name])
            state = State(**ckpt["state"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{self.ckpt_path}: does not fit this run "
                            f"({str(exc).splitlines()[0]})") from None
        self._saved_step = state.global_step
        return state

    def tick(self, state: State) -> None:
        """After every optimiser step: stop on a non-finite loss; checkpoint when
        `checkpoint_every_s` has passed, or when a stop signal came (then stop). Where the
        ranks' verdicts meet on the device (NCCL), that collective is a host sync: it runs
        every SYNC_EVERY steps only, so a stop signal waits at most that many steps."""
        if not distributed.host_collectives() and state.global_step % SYNC_EVERY:
            return
        stop, due = self._poll(state)
        if stop or due:
            self._save(state, stop)

    def check(self, state: State) -> None:
        """The loss guard alone, before a task logs a curve row outside the run dir (dvclive)."""
        self._poll(state)

    def save(self, state: State) -> None:
        """Write ckpt/last.pt (rank 0), after the guard: a diverged run never overwrites its
        last good checkpoint. A stop signal received by now is acted on after the write."""
        self._save(state, self._poll(state)[0])

    def _poll(self, state: State) -> tuple[int, bool]:
        """Every rank's verdict at this step: raise when the loss is non-finite on any rank;
        return the stop signal's code (0: none) of any rank, and whether a checkpoint is due
        by time on any rank (so all save together: a save syncs the trainer's step values,
        which may be a collective)."""
        due = int(time.monotonic() - self._last_save >= self.checkpoint_every_s)
        bad, stop, due = distributed.max_over_ranks(
            [int(not finite_loss(state)), STOP.code() if STOP.owner is self else 0, due])
        if bad:
            raise self.diverged(state, "loss")
        return stop, bool(due)

    def _save(self, state: State, stop: int) -> None:
        if self.before_save is not None:
            self.before_save()  # the State must hold every step up to global_step
        now = time.monotonic()
        state.wall_time_s = self._wall_base + (now - self._session_start)
        self._last_save = now
        self._check_weights(state)
        if self.is_main:
            save_checkpoint(self.ckpt_path, {
                "modules": {k: _unwrap(v).state_dict() for k, v in self.modules.items()},
                "state": dataclasses.asdict(state), "spec_digest": self.spec.digest(),
                "spec": self.spec.canonical(), "torch": str(torch.__version__)})
        self._saved_step = state.global_step
        if stop:
            self._stop(state, STOP.signum(stop))

    def _stop(self, state: State, signum: int) -> None:
        """The checkpoint is written: exit (local), or hand over to the handler we replaced
        (submitit: requeue for SIGUSR2, carry on for SIGTERM)."""
        where = f"checkpointed at step {state.global_step} ({self.ckpt_path})"
        handler = STOP.previous(signum)
        STOP.take(signum)
        if not callable(handler):
            raise Interrupted(f"{self.spec.run_id}: {signal_name(signum)}: {where}; run the "
                              "same command to resume", signum)
        if self.is_main:
            print(f"{self.spec.run_id}: {signal_name(signum)}: {where}", file=sys.stderr,
                  flush=True)
        handler(signum, None)

    def _check_weights(self, state: State) -> None:
        """Every float tensor of every registered state dict (weights, buffers, optimiser
        moments) is finite: one host sync per device and object."""
        for name, obj in self.modules.items():
            flags: dict[torch.device, list[torch.Tensor]] = {}
            for t in float_tensors(_unwrap(obj).state_dict()):
                flags.setdefault(t.device, []).append(torch.isfinite(t).all())
            if not all(bool(torch.stack(f).all()) for f in flags.values()):
                raise self.diverged(state, f"{name} state")

    def diverged(self, state: State, what: str, step: int | None = None) -> UserError:
        """The one-line refusal of a diverged run (`step`: where it appeared, default now)."""
        step = state.global_step if step is None else step
        return UserError(f"{self.spec.run_id}: training diverged: non-finite {what} at step "
                         f"{step}; last good checkpoint: {self._last_good()}")

    def _last_good(self) -> str:
        if self._saved_step is None or not self.ckpt_path.exists():
            return "none written"
        return f"{self.ckpt_path} (step {self._saved_step}), kept"

    # -------------------------------------------------------------------------- results

    def write_json(self, name: str, obj: Any) -> None:
        if self.is_main:
            atomic_write_json(self.dir / name, obj, root=self.paths.runs_dir)

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.is_main:
            atomic_write_bytes(self.dir / name, data, root=self.paths.runs_dir)

    def write_torch(self, name: str, obj: Any) -> None:
        """A torch file handed to users (weights): tensors and plain containers only, so it
        loads with weights_only=True."""
        if self.is_main:
            save_checkpoint(self.dir / name, obj)  # below runs_dir: Paths announced it

    def finish(self, metrics: dict, *, curve: list[dict] | None = None,
               **json_files: Any) -> dict:
        """Write result files, then metrics.json last (it marks the run finished); every rank
        returns the metrics. A run that trained writes none of them if one holds a
        non-finite number."""
        self._claim()
        if curve is not None:
            json_files["curve"] = curve
        if self.modules:
            self.check_results({"metrics": metrics, **json_files})
        for name, obj in json_files.items():
            self.write_json(f"{name}.json", obj)
        if self.is_main:
            publish(self.paths, self.spec, metrics, self.dir / "curve.json")
        self.write_json(METRICS, metrics)
        distributed.barrier()
        self.close(ok=True)
        return metrics

    def check_results(self, results: Any) -> None:
        """Refuse (on every rank) to write results holding a non-finite number."""
        bad = nonfinite(results)
        if distributed.max_over_ranks([int(bad is not None)])[0]:
            raise UserError(f"{self.spec.run_id}: training diverged: non-finite "
                            f"{bad or 'value'} in the results, none written; last good "
                            f"checkpoint: {self._last_good()}")


def _on_main(fn):
    """fn() on rank 0 only; its UserError is raised on every rank (the others name rank 0),
    so no rank waits at a collective for a rank that gave up."""
    result, err = None, None
    if distributed.is_main():
        try:
            result = fn()
        except UserError as exc:
            err = exc
    if distributed.max_over_ranks([int(err is not None)])[0]:
        raise err or UserError("rank 0 refused the run (its error is in rank 0's log)")
    return result


def _unwrap(obj: Any) -> Any:
    return distributed.unwrap(obj) if isinstance(obj, nn.Module) else obj
