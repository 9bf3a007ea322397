"""The study's DAG, read from DVC: every stage cell of dvc.yaml (matrix cells resolved by DVC,
with the params of params.yaml), its parents (DVC's own graph: a stage depends on the stages
whose outputs it reads), and what its command would run.

A cell's command is read through the real CLI with `launch.PLAN` set, so the spec comes from
the same code path as `dvc repro` (flags, params, profile), and nothing runs. The CLI is the
layer above the study, so the caller passes it in (`cli`: cli/options.py `pixbench_command`).
A cell is pending unless `launch.finished` says the spec digest's run (or the data config's
cache) is finished: the check `Run.open` makes, so what the study skips is exactly what
`dvc repro` would reuse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import shlex
from collections.abc import Callable
from pathlib import Path

from pixbench.errors import UserError


@dataclasses.dataclass
class Cell:
    """One stage cell of the pipeline (a DVC stage, or one cell of a matrix stage)."""

    name: str  # DVC's address: `classify@xxs-1-0`, `prepare`
    stage: str  # the dvc.yaml stage: `classify`
    task: str  # a key of tasks/table.py TASKS
    spec: object = dataclasses.field(repr=False)
    stale: str = "error"
    device: str = "auto"
    parents: list[str] = dataclasses.field(default_factory=list)
    done: bool = False  # finished: same spec digest (launch.finished)

    @property
    def run_id(self) -> str:
        return self.spec.run_id


# A function returning the `pixbench` click command (cli/options.py pixbench_command): a
# module-level function, so a study's record job can carry it to the SLURM node.
CommandLine = Callable[[], object]


def plan_command(cmd: str, where: str, cli: CommandLine) -> tuple[str, object, str, str]:
    """(task, spec, stale, device) that the pixbench command `cmd` would launch."""
    from pixbench.launch import PLAN

    args = shlex.split(cmd) if isinstance(cmd, str) else []
    if not args or Path(args[0]).name != "pixbench":
        raise UserError(f"{where}: command {cmd!r} is not one pixbench command; a study runs "
                        "only pixbench tasks")
    plan: list = []
    token = PLAN.set(plan)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            cli().main(args[1:], standalone_mode=False, prog_name="pixbench")
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    except Exception as exc:  # click's usage errors: the message names the flag
        raise UserError(f"{where}: {cmd!r}: {exc}") from None
    finally:
        PLAN.reset(token)
    if len(plan) != 1:
        raise UserError(f"{where}: {cmd!r} launched {len(plan)} tasks, not one")
    return plan[0]


def _graph(repo, targets: list[str]):
    """DVC's stage graph (edges: stage -> a stage it depends on), narrowed to `targets` and
    everything upstream of them, as `dvc repro TARGETS` would run."""
    graph = repo.index.graph
    if not targets:
        return graph
    keep = set()
    for target in targets:
        try:
            keep.update(repo.stage.collect(target, with_deps=True))
        except Exception as exc:  # DVC's StageNotFound and friends: one line
            raise UserError(f"study target {target!r}: {str(exc).splitlines()[0]}") from None
    return graph.subgraph(keep)


@contextlib.contextmanager
def _params_read_once():
    """Every cell's command reads params.yaml; while the cells are planned, read it once per
    file (pure-Python YAML: ~0.1 s a read, 50 cells). The result is only read, never changed."""
    import pixbench.config as config

    original = config.load_params
    cached = functools.lru_cache(maxsize=8)(lambda path, _stat: original(path))
    def load(path):
        try:
            st = Path(path).stat()
        except OSError:
            return original(path)  # its one-line error names the file
        return cached(str(path), (st.st_ino, st.st_size, st.st_mtime_ns))

    config.load_params = load
    try:
        yield
    finally:
        config.load_params = original


def load_cells(root: Path, targets: list[str] | None = None, *, cli: CommandLine) -> list[Cell]:
    """The cells of `dvc repro [targets]` in the repo at `root`, parents before children.
    Run with the working directory at `root` (params.yaml and the machine paths are relative)."""
    import networkx as nx

    from pixbench.config import Paths
    from pixbench.launch import finished

    paths = Paths()
    with _repo(root) as repo, _params_read_once():
        graph = _graph(repo, list(targets or []))
        order = list(reversed(list(nx.topological_sort(graph))))
        cells = []
        for stage in order:
            if stage.cmd is None:  # a data source (`.dvc` file): nothing to run
                continue
            task, spec, stale, device = plan_command(stage.cmd, f"stage {stage.addressing}", cli)
            parents = [p.addressing for p in graph.successors(stage) if p.cmd is not None]
            done = finished(task, spec, paths, stale) is not None
            cells.append(Cell(stage.addressing, stage.addressing.split("@")[0], task, spec,
                              stale, device, sorted(parents), done))
    return cells


@contextlib.contextmanager
def _repo(root: Path):
    """DVC's Repo at `root`; DVC's own errors (no repo, a bad dvc.yaml) become one line."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            yield repo
    except DvcException as exc:
        raise UserError(f"{root}: {str(exc).splitlines()[0]}") from None


def commit_cells(root: Path, names: list[str]) -> int:
    """Record finished cells in dvc.lock in one write, as `dvc commit --force NAME` records one
    (dvc/repo/commit.py: save the deps, params and outs, cache the outs, dump the lock). `dvc
    repro` rewrites the whole lock after every stage, a round trip of ~270 KB of YAML through
    ruamel's pure-Python parser: ~5 s a stage on a 2-core VM, 4 of the default pipeline's
    ~15 minutes. Only for cells that `launch.finished` says are finished: their outs are what
    their command writes for these params (the spec digest covers every param they read)."""
    from dvc.repo import lock_repo

    with _repo(root) as repo, lock_repo(repo):
        wanted = set(names)  # the index loads dvc.yaml and dvc.lock once (collect: per name)
        stages = [s for s in repo.index.stages if s.addressing in wanted]
        missing = wanted - {s.addressing for s in stages}
        if missing:
            raise UserError(f"no such stage in dvc.yaml: {sorted(missing)[0]}")
        by_file: dict[str, list] = {}
        for stage in stages:
            by_file.setdefault(stage.dvcfile.relpath, []).append(stage)
        for group in by_file.values():
            for stage in group:
                stage.save()
                stage.commit()
            group[0].dvcfile.dump_stages(group, update_pipeline=False)
    return len(stages)


def record(root: Path, targets: list[str], *, cli: CommandLine, env: dict | None = None) -> None:
    """Record a study in DVC: the cells finished for the current params (planned again: a
    params edit since they ran leaves them to DVC) in one write, then `dvc repro TARGETS`,
    which runs the rest: the report, verify, and any cell not finished."""
    import subprocess
    import sys

    from pixbench.tasks.table import STATELESS

    done = [c.name for c in load_cells(root, targets, cli=cli)
            if c.done and c.task not in STATELESS]
    if done:
        commit_cells(root, done)
    rc = subprocess.run([sys.executable, "-m", "dvc", "repro", *targets], cwd=root,
                        env=env).returncode
    if rc != 0:
        raise UserError(f"dvc repro exited with {rc} (its output is above)")


def dvc_clean(root: Path, targets: list[str] | None = None) -> bool:
    """Whether `dvc status [targets]` has nothing to report (every cell recorded)."""

    with _repo(root) as repo:
        return not repo.status(targets=list(targets or []) or None, with_deps=True)
