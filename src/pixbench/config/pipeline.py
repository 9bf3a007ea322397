"""Specs of the pipeline's non-training stages (data prepare, report, verify), so every stage
starts the same way (`launch(spec, ...)`): here or as a SLURM job; and the runs of the
current sweeps (`sweep_runs`), the one list the report and verify both read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from pixbench.config.schema import DataConfig, Digestible, SafeName
from pixbench.errors import UserError


class PrepareSpec(Digestible):
    """One dataset cache: the classification track's or the generation track's images."""

    task: Literal["prepare"] = "prepare"
    profile: SafeName
    track: Literal["classify", "gen"]
    data: DataConfig

    @property
    def run_id(self) -> str:
        return "prepare-gen" if self.track == "gen" else "prepare"


class ReportSpec(Digestible):
    """The report of one profile, built from the params file it names (read where it runs)."""

    task: Literal["report"] = "report"
    profile: SafeName
    params_file: str

    @property
    def run_id(self) -> str:
        return "report"


class VerifySpec(Digestible):
    """Verify one profile's fresh results against reports/reference/<profile>.json."""

    task: Literal["verify"] = "verify"
    profile: SafeName
    params_file: str
    update_reference: bool = Field(description="Write the reference from the fresh results "
                                   "instead of comparing.")

    @property
    def run_id(self) -> str:
        return "verify"


@dataclass(frozen=True)
class SweepRun:
    """One run of the current sweeps: its group (the cell, seeds pooled) and its spec."""

    task: str
    group: str  # "classify xxs p1", "classify xxs p1 shuffle", "vq-eval", "dit-eval xxs p2"
    seed: int
    spec: Digestible

    @property
    def run_id(self) -> str:
        return self.spec.run_id


def sweep_runs(params) -> list[SweepRun]:
    """Every run the DVC matrices of `params` make (dvc.yaml), in a fixed order: the cells of
    the current sweep and seeds, whatever other runs lie on disk."""
    from pixbench.config.classify_specs import make_classify_spec, make_mae_spec, make_pretrain_spec

    out, sw, ms = [], params.sweep, params.mae_sweep

    def add(task: str, spec, extra: str = "") -> None:
        group = f"{task} {spec.size} p{spec.patch}" + (f" {extra}" if extra else "")
        out.append(SweepRun(task, group, spec.seed, spec))

    for size, patch, seed in _cells(sw.sizes, sw.patches, sw.seeds):
        add("classify", make_classify_spec(params, size=size, patch=patch, seed=seed))
    for variant in params.locality.run:
        for size, patch, seed in _cells(sw.sizes, sw.patches, params.locality.seeds):
            add("classify", make_classify_spec(params, size=size, patch=patch, seed=seed,
                                               variant=variant), variant)
    if ms is None or params.active.mae is None:  # a profile without an MAE track
        return out + _gen_runs(params)
    for size, patch, seed in _cells(ms.sizes, ms.patches, ms.seeds):
        add("mae-pretrain", make_pretrain_spec(params, size=size, patch=patch, seed=seed))
        for task in ("mae-finetune", "mae-linprobe", "mae-scratch"):
            add(task, make_mae_spec(params, task=task, size=size, patch=patch, seed=seed))
    if ms.alt_target is not None:
        for size, patch, seed in _cells(ms.sizes, ms.alt_patches, ms.seeds):
            spec = make_pretrain_spec(params, size=size, patch=patch, seed=seed,
                                      target=ms.alt_target)
            add("mae-pretrain", spec, spec.variant or "")
    return out + _gen_runs(params)


def _cells(sizes, patches, seeds):
    return [(size, patch, seed) for size in sizes for patch in patches for seed in seeds]


def _gen_runs(params) -> list[SweepRun]:
    from pixbench.config.gen_specs import (make_dit_eval_spec, make_dit_spec, make_featnet_spec,
                                           make_vq_eval_spec, make_vq_spec)

    gs = params.gen_sweep
    if params.active.gen is None or gs is None:
        return []
    vq, featnet = make_vq_spec(params), make_featnet_spec(params)
    out = [SweepRun("vq", "vq", vq.seed, vq), SweepRun("featnet", "featnet", featnet.seed, featnet),
           SweepRun("vq-eval", "vq-eval", vq.seed, make_vq_eval_spec(params))]
    for size, patch, seed in _cells(gs.sizes, gs.patches, gs.seeds):
        for task, make in (("dit", make_dit_spec), ("dit-eval", make_dit_eval_spec)):
            out.append(SweepRun(task, f"{task} {size} p{patch}", seed,
                                make(params, size=size, patch=patch, seed=seed)))
    return out


def make_prepare_spec(params, *, gen: bool) -> PrepareSpec:
    if not gen:
        return PrepareSpec(profile=params.profile, track="classify", data=params.active.data)
    if params.active.gen is None:
        raise UserError(f"profiles.{params.profile}.gen is not set: no generation track to prepare")
    return PrepareSpec(profile=params.profile, track="gen", data=params.active.gen.data)


def make_report_spec(params, params_file: Path) -> ReportSpec:
    return ReportSpec(profile=params.profile, params_file=str(Path(params_file).resolve()))


def make_verify_spec(params, params_file: Path, *, update_reference: bool) -> VerifySpec:
    if params.verify is None:
        raise UserError(f"{params_file}: no `verify` section (k, rel_floor, single_seed_rel): "
                        "verify has no tolerance to judge by")
    return VerifySpec(profile=params.profile, params_file=str(Path(params_file).resolve()),
                      update_reference=update_reference)
