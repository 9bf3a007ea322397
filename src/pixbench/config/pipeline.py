"""Specs of the pipeline's non-training stages (data prepare, report), so every stage starts
the same way (`launch(task, spec, ...)`): here or as a SLURM job."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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


def make_prepare_spec(params, *, gen: bool) -> PrepareSpec:
    if not gen:
        return PrepareSpec(profile=params.profile, track="classify", data=params.active.data)
    if params.active.gen is None:
        raise UserError(f"profiles.{params.profile}.gen is not set: no generation track to prepare")
    return PrepareSpec(profile=params.profile, track="gen", data=params.active.gen.data)


def make_report_spec(params, params_file: Path) -> ReportSpec:
    return ReportSpec(profile=params.profile, params_file=str(Path(params_file).resolve()))
