"""Stop signals: SIGTERM and SIGUSR2 become a checkpoint at the next step boundary.

SLURM sends SIGTERM on preemption, `scancel` and `scontrol requeue`, and SIGUSR2
`signal_delay_s` before the time limit (submitit's `--signal`); a parent that dies sends
SIGTERM too (`die_with_parent`). While a run holds training state (`Run.restore` arms,
`Run.close` disarms) the handler only records the signal; `Run.tick`/`Run.save` see it at the
next step boundary, write the checkpoint, then act as the handler they replaced would have:

- the default disposition (a local run): raise `Interrupted`, one line "checkpointed at step N;
  run the same command to resume", exit code 128 + signal (143 for SIGTERM);
- a Python handler (submitit's, inside a SLURM job): call it. For SIGUSR2 that is
  `checkpoint_and_try_requeue`: `TaskJob.checkpoint()` + `scontrol requeue` + exit, so the job
  is requeued only after the checkpoint is on disk. submitit logs SIGTERM and carries on (SLURM
  follows it with SIGUSR2 or SIGKILL), and so does the run, with its checkpoint written.

An ignored signal (SIG_IGN) stays ignored. This module imports only the standard library: the
CLI calls `die_with_parent` before anything heavy is imported.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from pixbench.errors import UserError
from pixbench.procs import pdeathsig

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class Interrupted(UserError):
    """A run stopped by a signal after writing its checkpoint; exit code 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """The stop signals' handlers while a run is armed (one per process, main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.owner: Any = None  # the run that armed them last (a run never closed is taken over)
        self._prev: dict[int, Any] = {}

    def arm(self, owner: Any) -> None:
        """Record SIGTERM/SIGUSR2 from now on instead of acting on them."""
        if threading.current_thread() is not threading.main_thread():
            return
        self.owner = owner
        if self._prev:
            return
        for signum in STOP_SIGNALS:
            prev = signal.getsignal(signum)
            if prev is signal.SIG_IGN:  # ignored on purpose by whoever started us: keep it so
                continue
            self._prev[signum] = signal.SIG_DFL if prev is None else prev
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: Any) -> None:
        if self.received != signal.SIGUSR2:  # USR2 (requeue) outranks TERM (carry on under SLURM)
            self.received = signum

    def code(self) -> int:
        """0: nothing received, 1: SIGTERM, 2: SIGUSR2 (comparable across ranks: max wins)."""
        return {None: 0, signal.SIGTERM: 1, signal.SIGUSR2: 2}[self.received]

    @staticmethod
    def signum(code: int) -> int:
        return STOP_SIGNALS[code - 1]

    def previous(self, signum: int) -> Any:
        return self._prev.get(signum, signal.SIG_DFL)

    def take(self, signum: int) -> None:
        """The run acted on `signum` (a SIGUSR2 that came meanwhile stays recorded)."""
        if self.received == signum:
            self.received = None

    def disarm(self, owner: Any, deliver: bool) -> None:
        """Restore the replaced handlers; with `deliver`, hand a signal that arrived after the
        last step boundary to them (the run has finished: the process ends as it was asked)."""
        if owner is not self.owner:
            return
        pending, prev = self.received, self._prev
        self._prev, self.received, self.owner = {}, None, None
        for signum, handler in prev.items():
            signal.signal(signum, handler)
        if deliver and pending is not None and pending in prev:
            handler = prev[pending]
            if callable(handler):
                handler(pending, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(pending)


STOP = StopSignals()

def die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies (a killed `dvc repro` takes its pixbench child
    with it, which checkpoints and exits). Not under nohup (SIGHUP ignored): that asks to
    outlive the parent. (The kernel means the parent *thread*: a parent that starts pixbench
    from a worker thread must keep that thread alive, as dvc and shells do.)"""
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        return
    parent = os.getppid()
    if pdeathsig(signal.SIGTERM) and os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
