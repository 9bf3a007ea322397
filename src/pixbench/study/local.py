"""Run the study's pending cells on this machine, `jobs` at a time, then record them with DVC.

`dvc repro` runs one stage after another, each in a fresh process that imports torch and timm
(~4.5 s of CPU) and trains a tiny model on every core. On a small CPU both are waste: the
ViT-XXS GEMMs scale poorly from one thread to two (p=1 cell, 2-core AVX-512 VM: 82.5 s of
training with 2 threads, 117.9 s with 1, so two cells side by side finish 1.4x sooner), and
50 cells pay the imports 50 times. Here `jobs` long-lived worker processes each import once and
run cells one after another with `threads` intra-op threads; a cell starts when its parents
(DVC's graph, study/dag.py) have finished. Among the cells that may start, the one heading the
longest remaining chain goes first (costed by each cell's last recorded `wall_s` in
reports/metrics), so the VQ -> DiT chain starts early and no worker idles at the end.

Afterwards dag.record writes the finished cells into dvc.lock at once and `dvc repro TARGETS`
runs the rest (the report and verify, which have no finished state). Results depend on the thread count (the GEMM's reduction split), so bitwise equality
holds between runs with the same `threads` on one machine; the run dir records torch_threads.
A failed cell stops only its descendants; its log is under the study folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

from pixbench.errors import UserError
from pixbench.runio import read_json

DEFAULT_COST_S = 10.0  # a cell with no recorded wall time (new, or an eval that records none)


# ---------------------------------------------------------------------------- in the workers


_PARENT: int | None = None  # in a worker: the `study run` process that started it


def _init_worker(threads: int, cwd: str, parent: int) -> None:
    """Pin the intra-op threads before torch starts its OpenMP pool (spawned: nothing imported).
    Stopping is the parent's to decide: Ctrl-C reaches the whole process group, so a worker
    ignores SIGINT and gets SIGTERM from the parent (or from the kernel when the parent dies,
    nohup or not), on which its cell checkpoints at the next step boundary (tasks/signals.py)."""
    from pixbench.procs import worker_dies_with

    global _PARENT
    _PARENT = parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_dies_with(parent, signal.SIGTERM)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.chdir(cwd)
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def _output_to(log: Path):
    """The cell's stdout and stderr (Python's and C's: file descriptors 1, 2) into its log."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as out:
        os.dup2(out.fileno(), 1), os.dup2(out.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


PROGRESS_EVERY_S = 30.0  # a running cell's progress is shown at least this often


def last_progress(log: Path) -> str | None:
    """The last progress line a cell wrote to its log (trainer: `step s/S ... eta`), or None;
    reads only the log's tail."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    lines = [ln.strip() for ln in tail if " eta " in ln]
    return lines[-1] if lines else None


def _run_cell(job, log: str) -> float:
    """Run one launch.TaskJob with its output in `log`; its wall seconds."""
    start = time.perf_counter()
    try:
        with _output_to(Path(log)):
            try:
                job()
            except BaseException:
                traceback.print_exc()
                raise
    finally:
        _end_if_orphaned()
    return time.perf_counter() - start


def _end_if_orphaned() -> None:
    """After a cell: a worker whose parent died (the cell took the SIGTERM and checkpointed)
    ends now. It would otherwise wait forever for the next cell on the pool's pipe, which it
    keeps open itself, and keep multiprocessing's resource tracker alive with it."""
    if _PARENT is not None and os.getppid() != _PARENT:
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(128 + signal.SIGTERM)


# ---------------------------------------------------------------------------- in the parent


def _terminated(signum: int, frame) -> None:
    from pixbench.tasks.signals import Interrupted

    raise Interrupted("study run stopped by SIGTERM: the running cells checkpointed; run the "
                      "same command to resume", signum)


def _stop(pool: ProcessPoolExecutor) -> None:
    """SIGTERM every worker (each running cell writes its checkpoint and ends), then wait for
    them. `_processes` is the executor's own {pid: process} (no public accessor)."""
    for process in list((pool._processes or {}).values()):
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def cell_costs(cells: list, paths) -> dict[str, float]:
    """Each cell's expected seconds: its last recorded wall_s (reports/metrics), else a default."""
    from pixbench.tasks.rundir import dvc_file

    costs = {}
    for cell in cells:
        path = dvc_file(paths, "metrics", cell.spec.profile, cell.run_id)
        try:
            costs[cell.name] = float(read_json(path, "metrics").get("wall_s", DEFAULT_COST_S))
        except (UserError, TypeError, ValueError):
            costs[cell.name] = DEFAULT_COST_S
    return costs


def chain_lengths(cells: list, costs: dict[str, float]) -> dict[str, float]:
    """Each cell's cost plus the costliest chain of descendants after it (the critical path)."""
    children: dict[str, list[str]] = {c.name: [] for c in cells}
    for cell in cells:
        for parent in cell.parents:
            children.setdefault(parent, []).append(cell.name)
    length: dict[str, float] = {}
    for cell in reversed(cells):  # cells come parents first: children are measured already
        length[cell.name] = costs.get(cell.name, 0.0) + max(
            (length.get(k, 0.0) for k in children[cell.name]), default=0.0)
    return length


def run_cells(cells: list, *, jobs: int, threads: int, folder: Path, paths,
              say=print) -> dict[str, str]:
    """Run every pending cell (not done, not stateless) in `jobs` workers; {name: state}, the
    state one of done, reused, failed, blocked (a parent failed), stateless."""
    from pixbench.launch import TaskJob, _abs_paths
    from pixbench.tasks.table import STATELESS

    by_name = {c.name: c for c in cells}
    states = {c.name: ("reused" if c.done else "stateless" if c.task in STATELESS else "pending")
              for c in cells}
    ended = {n for n, s in states.items() if s == "reused"}
    todo = {n for n, s in states.items() if s == "pending"}
    if not todo:
        return states
    priority = chain_lengths(cells, cell_costs(cells, paths))
    folder.mkdir(parents=True, exist_ok=True)
    abs_paths = _abs_paths(paths)
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(threads, os.getcwd(), os.getpid()))
    running: dict = {}
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        while todo or running:
            ready = sorted((n for n in todo if all(p in ended for p in by_name[n].parents)),
                           key=lambda n: (-priority[n], n))
            for name in ready[:jobs - len(running)]:
                cell = by_name[name]
                job = TaskJob(cell.task, cell.spec.canonical(), abs_paths, cell.stale, cell.device,
                              progress=True)
                running[pool.submit(_run_cell, job, str(folder / f"{cell.run_id}.log"))] = name
                todo.discard(name)
                say(f"start  {name}")
            if not running:
                break  # what is left waits for a failed cell
            finished, _ = wait(running, timeout=PROGRESS_EVERY_S, return_when=FIRST_COMPLETED)
            if not finished:  # a long cell: its latest progress line (step, ETA) from its log
                for name in sorted(running.values()):
                    line = last_progress(folder / f"{by_name[name].run_id}.log")
                    say(f"...    {name}: {line}" if line else f"...    {name}: running")
            for future in finished:
                name = running.pop(future)
                try:
                    secs = future.result()
                except BrokenProcessPool:
                    raise UserError(f"a worker died while running {name} (killed, out of "
                                    f"memory?); its log: {folder / by_name[name].run_id}.log; "
                                    "finished cells are kept, run again to resume") from None
                except Exception as exc:  # the cell's own error; its traceback is in its log
                    states[name] = "failed"
                    say(f"FAILED {name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                        f" (log: {folder / by_name[name].run_id}.log)")
                    continue
                states[name], _ = "done", ended.add(name)
                say(f"done   {name} ({secs:.1f} s)")
    except BaseException:  # Ctrl-C, SIGTERM (below), a dead worker: the running cells checkpoint
        _stop(pool)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    pool.shutdown(wait=True)
    for name in todo:
        states[name] = "blocked"
    return states
