"""`pixbench study run | submit | status | cancel`: the whole pipeline as a DAG of cells, run
here (several at a time) or as SLURM jobs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from pixbench.cli.options import ClusterOpt, WaitOpt, check_run_flags, noun, pixbench_command
from pixbench.errors import UserError

app = noun("study", help="The whole DVC pipeline as a DAG of cells: here, or as SLURM jobs.")

StudyArg = Annotated[Optional[str], typer.Argument(
    help="Study id (a folder under $PIXBENCH_LOGS_DIR/studies); default: the latest.")]
TargetsArg = Annotated[Optional[list[str]], typer.Argument(
    help="dvc.yaml stages (or cells) to run with everything upstream; default: all.")]
PollOpt = Annotated[float, typer.Option("--poll", min=0.5, help="Seconds between sacct polls.")]


def _end(state: dict, rows: list[dict]) -> None:
    from pixbench.study.view import failed_or_cancelled, summary

    for line in summary(state, rows):
        typer.echo(line, err=True)
    bad = failed_or_cancelled(rows)
    if bad:
        raise UserError(f"study {state['id']}: {len(bad)} of {len(rows)} cells failed or "
                        "were cancelled (summary above)")


JobsOpt = Annotated[Optional[int], typer.Option(
    "--jobs", "-j", min=1, help="Cells run at once (worker processes); default: the usable "
    "cores on a CPU-only machine, 1 where there is a GPU (each cell takes the GPU).")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="Intra-op threads per cell; default: the usable cores / --jobs. "
    "Results are bitwise equal between runs of one thread count on one machine.")]


def _repo_root() -> Path:
    root = Path.cwd()
    if not (root / "dvc.yaml").is_file():
        raise UserError(f"no dvc.yaml in {root}: run `pixbench study` from the repo root")
    return root


@app.command("cells")
def cells_cmd(check: Annotated[bool, typer.Option(
        "--check", help="Only say whether cells.yaml is params.yaml's study (exit 2 if not).")] = False
              ) -> None:
    """Write cells.yaml: every cell of params.yaml's studies (each profile's own sweeps), the
    list dvc.yaml's stages run. `study run` does it itself; run it after editing params.yaml
    before a plain `dvc repro`."""
    from pixbench.config import load_params
    from pixbench.config.cells import CELLS_FILE, check_cells, study_cells, write_cells

    root = _repo_root()
    params = load_params(root / "params.yaml")
    if check:
        check_cells(params, root)
        typer.echo(f"{CELLS_FILE}: up to date")
        return
    changed = write_cells(params, root)
    n = sum(len(v) for v in study_cells(params).values())
    typer.echo(f"{CELLS_FILE}: {'written' if changed else 'up to date'} ({n} entries for "
               f"{', '.join(params.studies)})")


def sync_cells(root: Path) -> None:
    """Rewrite cells.yaml when params.yaml's studies changed, saying so."""
    from pixbench.config import load_params
    from pixbench.config.cells import CELLS_FILE, write_cells

    if write_cells(load_params(root / "params.yaml"), root):
        typer.echo(f"study: {CELLS_FILE} rewritten from params.yaml's studies", err=True)


@app.command("run")
def run_cmd(targets: TargetsArg = None, jobs: JobsOpt = None, threads: ThreadsOpt = None) -> None:
    """Run every pending cell of the pipeline on this machine, --jobs at a time (each cell
    after its parents; workers import torch once), then record them: the finished cells
    into dvc.lock in one write, then `dvc repro` (the report and verify). Finished cells are
    reused; Ctrl-C or SIGTERM checkpoints the running ones."""
    import os

    from pixbench.config import Paths
    from pixbench.launch import finished
    from pixbench.study.dag import load_cells, record
    from pixbench.study.local import run_cells
    from pixbench.study.state import new_study_id, studies_dir

    root = _repo_root()
    sync_cells(root)
    cores = len(os.sched_getaffinity(0))
    jobs = jobs or (1 if list(Path("/dev").glob("nvidia[0-9]*")) else cores)
    threads = threads or max(1, cores // jobs)
    targets = list(targets or [])
    cells = load_cells(root, targets, cli=pixbench_command)
    # caches first, through DVC: a local `pixbench data prepare` (what `dvc repro` runs) always
    # writes afresh, so a cache prepared in a worker would be decoded twice
    prepare = [c for c in cells if c.task == "prepare" and not c.done]
    if prepare:
        record(root, [c.name for c in prepare], cli=pixbench_command)
        for cell in prepare:
            cell.done = finished(cell.task, cell.spec, Paths(), cell.stale) is not None
    pending = [c.spec for c in cells if not c.done and c.task not in ("prepare", "report",
                                                                       "verify")]
    if pending:  # the cost of what is left, before anything trains
        from pixbench.config import load_params
        from pixbench.study.estimate import estimate_lines

        for line in estimate_lines(load_params(root / "params.yaml"), pending, Paths(),
                                   threads=threads, jobs=jobs):
            typer.echo(line, err=True)
    folder = studies_dir(Paths()).resolve() / new_study_id()
    start = time.perf_counter()
    typer.echo(f"study: {len(cells)} cells, {sum(c.done for c in cells)} finished already; "
               f"{jobs} at a time, {threads} thread(s) each; logs: {folder}", err=True)
    states = run_cells(cells, jobs=jobs, threads=threads, folder=folder, paths=Paths(),
                       say=lambda line: typer.echo(line, err=True))
    bad = sorted(n for n, s in states.items() if s in ("failed", "blocked"))
    typer.echo(f"study: cells ran in {time.perf_counter() - start:.0f} s", err=True)
    if bad:
        raise UserError(f"{len(bad)} cells failed or wait for a failed one ({', '.join(bad[:4])}"
                        f"{', ...' if len(bad) > 4 else ''}); logs in {folder}")
    start = time.perf_counter()
    record(root, targets, cli=pixbench_command)
    typer.echo(f"study: recorded (and report, verify) in {time.perf_counter() - start:.0f} s",
               err=True)


@app.command("submit")
def submit_cmd(targets: TargetsArg = None, cluster: ClusterOpt = None, wait: WaitOpt = True,
               poll: PollOpt = 3.0) -> None:
    """Submit every pending cell of the pipeline as a SLURM job, each after its parents'
    jobs (afterok); finished cells (same spec digest) are reused, not submitted. The last job
    records everything with `dvc repro`. Blocks with a live table unless --no-wait."""
    from pixbench.config import Paths
    from pixbench.launch import resolve_launcher
    from pixbench.tasks.table import STATELESS
    from pixbench.study.dag import dvc_clean, load_cells
    from pixbench.study.state import cell_states, new_study_id, queued_elsewhere, studies_dir
    from pixbench.study.submit import submit_study
    from pixbench.study.view import watch

    check_run_flags(cluster=cluster)
    _, cluster = resolve_launcher("slurm", cluster)
    root = _repo_root()
    sync_cells(root)
    targets = list(targets or [])
    cells = load_cells(root, targets, cli=pixbench_command)
    pending = [c for c in cells if not c.done and c.task not in STATELESS]
    if not pending and dvc_clean(root, targets):
        typer.echo(f"study: all {len(cells)} cells are finished and recorded; nothing to submit")
        return
    busy = queued_elsewhere(Paths(), {c.run_id for c in pending})
    if busy:
        raise UserError(f"{len(busy)} pending cells are queued by an earlier study, e.g. "
                        f"{busy[0]}; wait for it or `pixbench study cancel` it")
    study_id = new_study_id()
    folder = studies_dir(Paths()).resolve() / study_id
    state = submit_study(cells, root=root, targets=targets, cluster=cluster, folder=folder,
                         study_id=study_id, cli=pixbench_command)
    jobs = {c["job_id"] for c in state["cells"] if c["job_id"]}
    typer.echo(f"study {study_id}: {len(cells)} cells, {sum(c.done for c in cells)} reused, "
               f"{len(jobs)} jobs submitted (the last records them with dvc repro)")
    typer.echo(f"state: {folder / 'study.json'}")
    if not wait:
        typer.echo(f"watch: pixbench study status {study_id} --wait; "
                   f"stop: pixbench study cancel {study_id}")
        return
    _end(state, watch(state, poll) if jobs else cell_states(state))


@app.command("status")
def status_cmd(study: StudyArg = None, wait: Annotated[bool, typer.Option(
        "--wait/--no-wait", help="Show a live table until every job has ended.")] = False,
               poll: PollOpt = 3.0) -> None:
    """The study's cells and their states (pending, running, done, failed, cancelled, reused),
    then the summary: every failed cell with its job id, log and remote traceback."""
    from rich.console import Console

    from pixbench.config import Paths
    from pixbench.study.state import cell_states, read_state, study_folder
    from pixbench.study.view import table, watch

    state = read_state(study_folder(Paths(), study))
    if wait:
        rows = watch(state, poll)
    else:
        rows = cell_states(state)
        Console(stderr=True).print(table(state, rows))
    _end(state, rows)


@app.command("cancel")
def cancel_cmd(study: StudyArg = None) -> None:
    """Cancel every job of the study that has not ended (finished cells stay finished)."""
    from pixbench.config import Paths
    from pixbench.study.state import cancel, read_state, study_folder

    state = read_state(study_folder(Paths(), study))
    ids = cancel(state)
    typer.echo(f"study {state['id']}: cancelled {len(ids)} jobs"
               + (f" ({', '.join(ids)})" if ids else ""))
