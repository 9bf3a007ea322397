"""The whole study as a DAG of cells: here (`pixbench study run`) or as SLURM jobs.

- dag.py: the pending cells and their parents, from DVC's graph and the spec digests; and
  `record`: the finished cells into dvc.lock in one write, then `dvc repro` for the rest;
- local.py: the cells on this machine, several at a time in long-lived workers;
- submit.py: one job per pending cell (a job array per stage where cells share their
  parents' jobs), `afterok` on the parents' jobs, and a last job that records everything
  with `dvc repro` (local launcher: every cell is finished, so nothing trains again);
- state.py: the study's state file and the jobs' states from `sacct`;
- view.py: the live table, the summary and the failed cells' tracebacks.
"""
