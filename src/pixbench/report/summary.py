"""A profile's headline numbers for DVC: summary.json beside its REPORT.md, the one metrics
file the report stage declares, so `dvc metrics show` / `dvc metrics diff` list a study in a
few columns (per-cell metrics stay beside it as plain files, for detail).

For each task the table ranks (its `ranked_by` metric: top-1 for classification and the MAE
tracks, FID for DiT), per patch size: the mean over seeds and the sample standard deviation;
then n (seeds), the number of cells and how many pass their validity gate
(verify/conclusions.py: not at chance, off the plateau). Keys are short (`top1.p4`,
`top1_sd.p4`) so a study fits a terminal. Numbers come from the same collection verify
compares.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from pixbench.config import Params, Paths
from pixbench.errors import UserError
from pixbench.runio import atomic_write_json


def summary_path(paths: Paths, params: Params) -> Path:
    """summary.json beside the profile's REPORT.md (config.cells.report_subdir)."""
    from pixbench.config.cells import report_subdir

    return Path(paths.reports_dir) / report_subdir(params, params.profile) / "summary.json"


# The column label of each ranked task's headline metric (`dvc metrics show` headers).
LABELS = {"classify": "top1", "mae-finetune": "finetune", "mae-linprobe": "linprobe",
          "mae-scratch": "scratch", "dit-eval": "fid"}


def headline(groups: dict, tasks: dict) -> dict:
    """{label: {cell: mean}, label_sd: {cell: sd}, n, cells, valid} over the groups of ranked
    tasks (cell `p4`, or `s-p4` when the study has several model sizes); `n` is the fewest
    seeds of a cell, `valid` how many cells pass their validity gate. Variants (locality, MAE
    targets) are left to the report."""
    from pixbench.verify.conclusions import group_gate

    ranked = {name: g for name, g in groups.items()
              if tasks[g["task"]].ranked_by is not None and len(name.split()) == 3}
    sizes = {name.split()[1] for name in ranked}
    out: dict = {}
    ns, valid = [], 0
    for name, g in ranked.items():
        _, size, patch = name.split()
        metric = tasks[g["task"]].ranked_by[0]
        label = LABELS.get(g["task"], g["task"])
        cell = patch if len(sizes) == 1 else f"{size}-{patch}"
        values = [r["values"][metric] for r in g["runs"]]
        out.setdefault(label, {})[cell] = round(statistics.fmean(values), 4)
        out.setdefault(f"{label}_sd", {})[cell] = round(statistics.stdev(values), 4) \
            if len(values) > 1 else 0.0
        ns.append(len(values))
        valid += not group_gate(g)
    return {**out, "n": min(ns, default=0), "cells": len(ranked), "valid": valid}


def write_summary(params: Params, paths: Paths, tasks: dict) -> Path:
    """Write the active profile's summary; cells without results yet are left out (the report
    says which), so a partial study still has a readable summary."""
    from pixbench.verify import collect
    from pixbench.verify.machine import this_machine

    try:
        groups = collect(params, paths, this_machine(), tasks)["groups"]
    except UserError:
        groups = {}
    path = summary_path(paths, params)
    atomic_write_json(path, headline(groups, tasks))
    return path
