"""Run steps in child processes, each with its own time limit; no step can stop another.

Every step runs in a process of its own (forked from a parent that has imported torch and
pixbench but never touched CUDA, so each child initialises CUDA itself; `spawn` is the
fallback), in a process group of its own so a timeout kills the DDP ranks it spawned too, with
stdout and stderr (C-level too) in its own log file. The child writes one result file; the
parent turns "no result" into `crash` (the exit code or signal says why) and "still running at
its limit" into `timeout`. A step whose dependency did not pass is `blocked`; a step left
without time in the check's budget is `not-run`. Steps run `jobs` at a time; an `exclusive`
step (the benchmark) runs alone.

A planted failure (the kit's self-test): PIXBENCH_GPUCHECK_PLANT="step:mode[,step:mode]" makes
that step raise (`raise`), hang (`hang`), kill itself (`crash`) or exit 3 (`exit`) before it
does anything else.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PASSED = ("pass", "skip")  # anything else fails the check
PLANT_ENV = "PIXBENCH_GPUCHECK_PLANT"
LIMIT_ENV = "PIXBENCH_GPUCHECK_STEP_LIMIT_S"  # a step's own time limit, for steps that pace


class CheckFailed(AssertionError):
    """A step's own check did not hold: the message is the detail line, as it is."""


class StepSkipped(Exception):
    """A step that does not apply here (e.g. world size 2 on one GPU): `skip`, not a failure."""


@dataclass(frozen=True)
class Step:
    name: str
    fn: Callable  # fn(ctx) -> {"detail": str, "figures": dict}; raises on failure
    proves: str  # the code path it proves, for the summary
    deps: tuple[str, ...] = ()
    timeout_s: float = 120.0
    exclusive: bool = False  # runs alone (timings)


@dataclass
class _Running:
    step: Step
    proc: mp.process.BaseProcess
    started: float
    deadline: float
    result: Path
    log: Path


def planted(name: str) -> str | None:
    for item in os.environ.get(PLANT_ENV, "").split(","):
        step, _, mode = item.strip().partition(":")
        if step == name:
            return mode or "raise"
    return None


def _plant(name: str) -> None:
    mode = planted(name)
    if mode == "hang":
        time.sleep(10 ** 6)
    elif mode == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "exit":
        os._exit(3)
    elif mode is not None:
        raise RuntimeError(f"planted failure ({PLANT_ENV}={os.environ[PLANT_ENV]})")


def _child(step: Step, ctx, result: str, log: str, threads: int, limit: float) -> None:
    """The child: own process group, output to the log, one result file at the end."""
    os.setpgrp()
    os.environ[LIMIT_ENV] = f"{limit:.1f}"
    os.chdir(ctx.work)  # nothing a step does depends on, or touches, the caller's folder
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    t0 = time.perf_counter()
    out: dict = {}
    try:
        import torch

        torch.set_num_threads(threads)
        _plant(step.name)
        out = dict(step.fn(ctx) or {})
        out.setdefault("status", "pass")
    except StepSkipped as exc:
        out = {"status": "skip", "detail": str(exc)}
    except BaseException as exc:  # the step's own failure, whatever it is: report, never raise
        traceback.print_exc()
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if not isinstance(exc, CheckFailed):
            msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
        out = {"status": "fail", "detail": msg}
    out["seconds_inside"] = time.perf_counter() - t0
    out["modules"] = sorted({m.split(".")[0] for m in list(sys.modules)})
    tmp = Path(result + ".tmp")
    tmp.write_text(json.dumps(out, default=str))
    tmp.replace(result)
    sys.stdout.flush()
    sys.stderr.flush()


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the step and everything it started (DDP ranks)
    except (ProcessLookupError, PermissionError):
        if proc.is_alive():
            proc.kill()
    proc.join(5)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _outcome(run: _Running, now: float, timed_out: bool) -> dict:
    base = {"seconds": round(now - run.started, 2), "timeout_s": round(run.deadline -
                                                                        run.started, 1),
            "log": str(run.log)}
    if timed_out:
        _kill_group(run.proc)
        res = {"status": "timeout", "detail": f"still running after {now - run.started:.0f} s: "
               f"killed (its limit)"}
    elif run.result.exists():
        res = json.loads(run.result.read_text())
        _kill_group(run.proc)  # anything it left behind
    else:
        code = run.proc.exitcode
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        res = {"status": "crash", "detail": f"the step's process ended without a result ({why})"}
    if res["status"] not in PASSED:
        res["log_tail"] = log_tail(run.log)
    return {**res, **base}


class Harness:
    def __init__(self, steps: list[Step], ctx, work: Path, *, jobs: int = 1,
                 budget_s: float = 480.0, start_method: str = "fork",
                 log: Callable[[str], None] = lambda m: None) -> None:
        self.steps, self.ctx, self.work, self.jobs = steps, ctx, Path(work), max(1, jobs)
        self.budget_s, self.log = budget_s, log
        self.mp = mp.get_context(start_method)
        self.results: dict[str, dict] = {}
        self.names = {s.name for s in steps}
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        (self.work / "results").mkdir(parents=True, exist_ok=True)

    def _threads(self, step: Step) -> int:
        cores = os.cpu_count() or 1
        return max(1, cores if step.exclusive else cores // self.jobs)

    def _start(self, step: Step, now: float, limit: float) -> _Running:
        result = self.work / "results" / f"{step.name}.json"
        log = self.work / "logs" / f"{step.name}.log"
        result.unlink(missing_ok=True)
        proc = self.mp.Process(target=_child, name=f"gpucheck-{step.name}", daemon=False,
                               args=(step, self.ctx, str(result), str(log), self._threads(step),
                                     limit))
        proc.start()
        self.log(f"{step.name}: started (limit {limit:.0f} s)")
        return _Running(step, proc, now, now + limit, result, log)

    def _record(self, step: Step, res: dict) -> None:
        res = {"name": step.name, "proves": step.proves, **res}
        self.results[step.name] = res
        self.log(f"{step.name}: {res['status'].upper()} ({res.get('seconds', 0):.1f} s) "
                 f"{res.get('detail', '')}")

    def _ready(self, step: Step) -> str | None:
        """'go', 'wait', or a blocked reason."""
        absent = [d for d in step.deps if d not in self.names]
        if absent:
            return f"needs {', '.join(absent)}, which this check does not run"
        bad = [d for d in step.deps if d in self.results
               and self.results[d]["status"] != "pass"]
        if bad:
            why = ", ".join(f"{d} ({self.results[d]['status']})" for d in bad)
            return f"blocked by {why}"
        return "go" if all(d in self.results for d in step.deps) else "wait"

    def _launch_ready(self, pending: list[Step], running: dict, end: float) -> None:
        for step in list(pending):
            state = self._ready(step)
            if state == "wait":
                continue
            if state != "go":
                pending.remove(step)
                self._record(step, {"status": "blocked", "detail": state, "seconds": 0.0})
                continue
            if any(r.step.exclusive for r in running.values()):
                return
            if len(running) >= self.jobs or (step.exclusive and running):
                return
            now = time.monotonic()
            limit = min(step.timeout_s, end - now)
            pending.remove(step)
            if limit < min(10.0, step.timeout_s):
                self._record(step, {"status": "not-run", "seconds": 0.0, "detail":
                                    "the check's --budget was spent before it could start"})
                continue
            running[step.name] = self._start(step, now, limit)

    def run(self) -> list[dict]:
        pending, running = list(self.steps), {}
        end = time.monotonic() + self.budget_s
        try:
            while pending or running:
                now = time.monotonic()
                for name, run in list(running.items()):
                    done = not run.proc.is_alive() or run.result.exists()
                    if done or now > run.deadline:
                        if done:
                            run.proc.join(5)
                        del running[name]
                        self._record(run.step, _outcome(run, now, timed_out=not done))
                self._launch_ready(pending, running, end)
                time.sleep(0.05)
        finally:  # interrupted (Ctrl-C, SIGTERM): steps live in their own process groups
            for run in running.values():
                _kill_group(run.proc)
        return [self.results[s.name] for s in self.steps]
